"""A recipe written with mindcv's keys (the layout of mindcv's configs/vit/*.yaml) trains with tools/train.py
after changing only the model, data_dir and device settings, PPT's keys added; the mindcv keys that change
nothing here are listed once in train.log with the reason; tools/eval.py -c recipe --ckpt_path W evaluates
it as mindcv's validate.py would; a foreign flag names the tool that takes it."""
import os

import pytest
import yaml
from tool_helpers import EVAL, TRAIN, assert_error, run_tool

from mindppt.data.digits import write_digits_imagefolder


@pytest.fixture(scope="module")
def mindcv_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("mindcv")
    data = str(root / "digits")
    write_digits_imagefolder(data, image_size=16)
    recipe = {
        # system
        "mode": 0, "distribute": False, "num_parallel_workers": 1, "val_while_train": True, "val_interval": 1,
        # dataset
        "dataset": "imagenet", "data_dir": data, "shuffle": True, "batch_size": 64, "drop_remainder": True,
        "dataset_download": False,
        # augmentation
        "image_resize": 16, "scale": [0.8, 1.0], "ratio": [0.9, 1.1], "hflip": 0.0, "vflip": 0.0,
        "interpolation": "bilinear", "auto_augment": None, "re_prob": 0.1, "re_value": 0, "cutmix": 0.0,
        "cutmix_prob": 1.0, "mixup": 0.0, "crop_pct": 1.0, "color_jitter": 0.0,
        # model
        "model": "ppt_vit_digits_patch4_16", "num_classes": 10, "drop_rate": 0.0, "drop_path_rate": 0.0,
        "pretrained": False, "ckpt_path": "", "keep_checkpoint_max": 1, "ckpt_save_dir": str(root / "ckpt"),
        "ckpt_save_interval": 1, "ckpt_save_policy": "top_k", "epoch_size": 2, "dataset_sink_mode": True,
        # loss
        "loss": "CE", "label_smoothing": 0.1,
        # lr scheduler
        "scheduler": "cosine_decay", "lr": 1.0e-3, "min_lr": 0.0, "warmup_epochs": 1, "decay_epochs": 1,
        "warmup_factor": 0.01,
        # optimizer
        "opt": "adamw", "weight_decay_filter": "norm_and_bias", "weight_decay": 0.05, "use_nesterov": False,
        # amp
        "amp_level": "O0", "val_amp_level": "O0", "loss_scale_type": "fixed", "loss_scale": 1024,
        "drop_overflow_update": True,
        # device (changed from Ascend) and PPT's keys
        "device_target": "CPU", "r_tokens": 3, "pp_loc_list": [1, 2, 3], "threshold": 3.0e-3,
        "eval_threshold": 4.0e-3,
    }
    path = root / "vit_digits_mindcv.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return str(path), recipe


def test_a_mindcv_recipe_trains_and_evaluates(mindcv_recipe):
    path, recipe = mindcv_recipe
    out = recipe["ckpt_save_dir"]
    result = run_tool(TRAIN, "-c", path)
    assert result.returncode == 0, result
    log = open(os.path.join(out, "train.log"), encoding="utf-8").read()
    for key in ("dataset_sink_mode", "dataset_download"):
        lines = [line for line in log.splitlines() if f"unused option {key} " in line]
        assert len(lines) == 1, log  # listed once, with the reason
    assert "no dataset sink" in log and "nothing is downloaded" in log
    assert "epoch 2/2" in log and "val top1" in log
    # top_k with keep_checkpoint_max 1: the better-validated of the two epoch snapshots is the one kept
    snapshots = sorted(f for f in os.listdir(out) if f.startswith("epoch_"))
    assert len(snapshots) == 1, snapshots
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml"), encoding="utf-8"))
    assert saved["scheduler"] == "cosine_decay" and saved["ckpt_save_policy"] == "top_k"

    evaluated = run_tool(EVAL, "-c", path, "--ckpt_path", os.path.join(out, "last.ckpt"))
    assert evaluated.returncode == 0, evaluated
    assert "ppt_vit_digits_patch4_16" in evaluated.stdout and "top-1" in evaluated.stdout.lower()


def test_a_training_flag_on_eval_names_train(mindcv_recipe):
    path, _ = mindcv_recipe
    result = run_tool(EVAL, "-c", path, "--ckpt_path", "w.ckpt", "--warmup_factor", "0.1")
    assert_error(result, "unrecognized arguments: --warmup_factor 0.1")
    assert "hint: --warmup_factor is read by tools/train.py" in result.stderr


def test_eval_help_is_one_screen_of_its_own_options():
    result = run_tool(EVAL, "--help")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert len(lines) <= 60, len(lines)
    for flag in ("--ckpt_path", "--val_amp_level", "--crop_pct", "--eval_threshold", "--metrics_out"):
        assert flag in result.stdout
    for flag in ("--lr", "--mixup", "--threshold ", "--epoch_size", "--ckpt_save_dir"):
        assert flag not in result.stdout
