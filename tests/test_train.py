"""End-to-end tests of training and evaluation (tools/train.py, tools/eval.py, mindppt.engine) in GRAPH_MODE.

A tiny generated ImageFolder (3 classes of 16x16 patterns) and the small digits ViT keep this fast:
one 2-epoch run is shared by the tests below; the others resume from its epoch-1 checkpoint, stop it
with SIGINT, evaluate it, or feed the tools bad configs.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from PIL import Image

import mindspore as ms
from train_helpers import assert_same_state, ckpt_arrays, make_tiny_imagefolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train.py")
EVAL = os.path.join(ROOT, "tools", "eval.py")

# No random augmentation, no mixup, no drop path: a resumed run must then end with the same weights.
# PPT trains with threshold 0 (always prune) and evaluates with 1.0 (always pool), so a validation that
# used the training threshold would not match tools/eval.py.
BASE_CONFIG = {
    "device_target": "CPU", "mode": "graph", "seed": 0,
    "model": "ppt_vit_digits_patch4_16", "num_classes": 3, "r_tokens": 2, "pp_loc_list": [1, 2],
    "threshold": 0.0, "eval_threshold": 1.0,
    "drop_path_rate": 0.0, "train_split": "train", "val_split": "val", "num_parallel_workers": 1,
    "batch_size": 8, "image_size": 16, "interpolation": "bilinear", "scale": [1.0, 1.0], "ratio": [1.0, 1.0],
    "hflip": 0.0, "auto_augment": None, "color_jitter": None, "re_prob": 0.0, "mixup": 0.0, "cutmix": 0.0,
    "label_smoothing": 0.1, "crop_pct": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
    "opt": "adamw", "lr": 2.0e-3, "weight_decay": 0.05, "scheduler": "cosine", "epoch_size": 2,
    "warmup_epochs": 0.5, "warmup_lr": 1.0e-4, "min_lr": 1.0e-5, "amp_level": "O0", "loss_scale_type": "none",
    "log_interval": 2, "val_interval": 1, "save_every": 1, "keep_checkpoints": 0,
}


# ----------------------------------------------------------------------------------------------- helpers
def write_config(path, **overrides):
    config = dict(BASE_CONFIG)
    config.update(overrides)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return str(path)


def tool_env():
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GLOG_v", "3")  # MindSpore: errors only
    return env


def run_tool(script, *argv, timeout=300):
    return subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=timeout,
                          env=tool_env(), cwd=ROOT)


def parse(argv):
    from mindppt.config import parse_args
    return parse_args(argv)


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_imagefolder(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def config_path(tiny_data, tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.yaml", data_dir=tiny_data)


@pytest.fixture(scope="module")
def straight_run(config_path, tmp_path_factory):
    """An uninterrupted 2-epoch training, in this process (GRAPH_MODE)."""
    from mindppt.engine.trainer import train

    out = str(tmp_path_factory.mktemp("straight"))
    summary = train(parse(["-c", config_path, "--output_dir", out]))
    return out, summary


# ----------------------------------------------------------------------------------------------- tests
def test_two_epochs_loss_falls_and_outputs_written(straight_run):
    out, summary = straight_run
    assert ms.get_context("mode") == ms.GRAPH_MODE
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"] - 0.05
    assert summary["global_step"] == 2 * 4  # 36 images // batch 8 = 4 steps per epoch
    assert summary["last_val"]["num_samples"] == 12
    for name in ("last.ckpt", "best.ckpt", "epoch_0001.ckpt", "epoch_0002.ckpt", "config.yaml", "train.log"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not [f for f in os.listdir(out) if "partial" in f or f.endswith(".tmp")]
    log = open(os.path.join(out, "train.log"), encoding="utf-8").read()
    assert "epoch 1/2 step 2/4 loss" in log and " lr " in log and "img/s" in log and " eta " in log
    assert "epoch 2/2: train loss" in log and "val top1" in log
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml"), encoding="utf-8"))
    assert saved["batch_size"] == 8 and saved["output_dir"] == out
    # the checkpoint is a full training state
    state = ms.load_checkpoint(os.path.join(out, "last.ckpt"))
    assert int(state["meta_epoch"].asnumpy()) == 2 and int(state["meta_global_step"].asnumpy()) == 8
    assert int(state["global_step"].asnumpy().reshape(-1)[0]) == 8  # the optimizer's step (LR position)
    assert any(k.startswith("adam_m.") for k in state) and "head.weight" in state


def test_resume_matches_uninterrupted_run(straight_run, config_path, tmp_path):
    """Resuming the epoch-1 checkpoint of the straight run (what a run stopped after one epoch writes)
    for the second epoch ends with the same weights and optimizer state."""
    from mindppt.engine.trainer import train

    out, _ = straight_run
    resumed = str(tmp_path / "resumed")
    summary = train(parse(["-c", config_path, "--output_dir", resumed,
                           "--resume", os.path.join(out, "epoch_0001.ckpt")]))
    assert [h["epoch"] for h in summary["history"]] == [2]
    assert summary["global_step"] == 8
    assert_same_state(os.path.join(out, "last.ckpt"), os.path.join(resumed, "last.ckpt"))


def test_sigint_writes_resumable_checkpoint_mid_epoch(straight_run, config_path, tmp_path):
    """SIGINT mid-epoch: a checkpoint is written and named, exit 128 + signal; resuming it ends like the
    straight run. (MindSpore turns a SIGINT that arrives during a graph step into SIGTERM: 130 or 143.)"""
    out, _ = straight_run
    run_dir = str(tmp_path / "interrupted")
    log_path = os.path.join(run_dir, "train.log")
    proc = subprocess.Popen([sys.executable, TRAIN, "-c", config_path, "--output_dir", run_dir,
                             "--log_interval", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=tool_env(), cwd=ROOT)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log_path) and "epoch 1/2 step 2/4" in open(log_path, encoding="utf-8").read():
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (130, 143), stderr
    assert "Traceback" not in stderr
    ckpt = os.path.join(run_dir, "last.ckpt")
    assert "interrupted by SIG" in stderr and ckpt in stderr and "--resume" in stderr
    state = ms.load_checkpoint(ckpt)
    where = (int(state["meta_epoch"].asnumpy()), int(state["meta_step_in_epoch"].asnumpy()))
    # mid-epoch after step 2 or 3; a signal that lands in the last step stops after the epoch's checkpoint
    assert where in ((0, 2), (0, 3), (1, 0)), where

    result = run_tool(TRAIN, "-c", config_path, "--output_dir", run_dir, "--resume", ckpt)
    assert result.returncode == 0, result.stderr
    assert_same_state(os.path.join(out, "last.ckpt"), ckpt)


def test_eval_tool_writes_metrics_json(straight_run, config_path, tmp_path):
    from mindppt.models import create_model
    from mindppt.models.flops import model_gmacs

    out, summary = straight_run
    metrics_path = str(tmp_path / "metrics.json")
    result = run_tool(EVAL, "-c", config_path, "--ckpt_path", os.path.join(out, "last.ckpt"),
                      "--metrics_out", metrics_path)
    assert result.returncode == 0, result.stderr
    assert "top-1" in result.stdout and "GMACs" in result.stdout and "img/s" in result.stdout
    metrics = json.load(open(metrics_path, encoding="utf-8"))
    assert set(metrics) == {"top1", "top5", "loss", "gmacs", "params_m", "img_per_s", "num_samples"}
    assert metrics["num_samples"] == 12
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0
    assert metrics["top5"] == 100.0  # 3 classes
    # same weights, data and (evaluation) threshold as the trainer's last validation
    assert metrics["top1"] == pytest.approx(summary["last_val"]["top1"])
    assert metrics["loss"] == pytest.approx(summary["last_val"]["loss"], rel=1e-4)
    assert 0.0 < metrics["loss"] < 5.0
    model = create_model("ppt_vit_digits_patch4_16", num_classes=3, img_size=16, r_tokens=2, pp_loc_list=(1, 2))
    assert [n for _, n in model.token_schedule] == [17, 15, 13, 13, 13, 13]
    assert metrics["gmacs"] == pytest.approx(model_gmacs(model))
    params = sum(int(np.prod(p.shape)) for p in model.trainable_params()) / 1e6
    assert metrics["params_m"] == pytest.approx(params)
    assert metrics["img_per_s"] > 0


def _assert_user_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def _load_tool(script):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{os.path.basename(script)[:-3]}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _in_process(capsys, script, *argv):
    """Run a tool's main through the same exit-status mapping as ``python tools/x.py`` (faster than a
    subprocess for errors caught before any graph is compiled)."""
    from mindppt.engine.cli import run_tool as run_main

    capsys.readouterr()
    code = run_main(_load_tool(script), list(argv))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([script, *argv], code, captured.out, captured.err)


def test_config_errors_exit_2_naming_the_key(config_path, tiny_data, tmp_path, capsys):
    # the real entry points, in a subprocess
    _assert_user_error(run_tool(TRAIN, "-c", config_path, "--bach_size", "4"), "--bach_size", "--batch_size")
    bad = write_config(tmp_path / "bad.yaml", data_dir=tiny_data, lerning_rate=0.1)
    _assert_user_error(run_tool(EVAL, "-c", bad, "--ckpt_path", "x.ckpt"), "lerning_rate", "bad.yaml")
    # the same mapping in-process
    _assert_user_error(_in_process(capsys, TRAIN, "-c", bad), "lerning_rate", "bad.yaml")
    _assert_user_error(_in_process(capsys, TRAIN, "-c", config_path, "--batch_size", "abc"), "batch_size", "abc")
    missing = str(tmp_path / "missing.yaml")
    _assert_user_error(_in_process(capsys, TRAIN, "-c", missing), missing)
    _assert_user_error(_in_process(capsys, EVAL, "-c", config_path), "ckpt_path")
    _assert_user_error(_in_process(capsys, TRAIN, "-c", config_path, "--pp_loc_list", "1,9", "--output_dir",
                                   str(tmp_path / "o")), "pp_loc_list", "9")
    assert not os.path.exists(tmp_path / "o")  # nothing written for a run that never started


def test_runtime_user_errors_exit_2(config_path, tmp_path, capsys):
    missing = str(tmp_path / "no_data")
    _assert_user_error(_in_process(capsys, TRAIN, "-c", config_path, "--data_dir", missing, "--output_dir",
                                   str(tmp_path / "o")), missing)
    ckpt = str(tmp_path / "nothing.ckpt")
    _assert_user_error(_in_process(capsys, TRAIN, "-c", config_path, "--output_dir", str(tmp_path / "o"),
                                   "--resume", ckpt), ckpt)
    _assert_user_error(_in_process(capsys, EVAL, "-c", config_path, "--ckpt_path", ckpt), ckpt)


def test_nonfinite_loss_stops_naming_step_and_checkpoint(config_path, tmp_path):
    """A huge learning rate blows the weights up: training stops with the step and checkpoint named."""
    run_dir = str(tmp_path / "nan")
    result = run_tool(TRAIN, "-c", config_path, "--output_dir", run_dir, "--lr", "1e30", "--warmup_epochs", "0")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: loss is" in result.stderr and "global step" in result.stderr
    assert "no checkpoint has been written yet" in result.stderr or "last.ckpt" in result.stderr


def test_ema_clipping_and_dynamic_loss_scale(config_path, tmp_path):
    """The optional paths of the train step compile and run: EMA (validated, checkpointed, evaluated
    with --ema true), gradient clipping and dynamic loss scaling (fp32 here, so the scale never drops)."""
    from mindppt.engine.trainer import train

    out = str(tmp_path / "ema")
    summary = train(parse(["-c", config_path, "--output_dir", out, "--epoch_size", "1", "--warmup_epochs", "0",
                           "--ema", "true", "--ema_decay", "0.5", "--clip_grad", "1.0",
                           "--loss_scale_type", "dynamic", "--loss_scale", "256"]))
    record = summary["history"][0]
    assert "ema_top1" in record and 0.0 <= record["ema_top1"] <= 100.0
    state = ckpt_arrays(os.path.join(out, "last.ckpt"))
    assert float(state["scale_sense"]) == 256.0
    ema = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
    assert "head.weight" in ema and set(ema) <= set(state)
    # decay 0.5 over 4 steps: the average trails the weights but is close to them
    assert not np.allclose(ema["head.weight"], state["head.weight"])
    assert np.abs(ema["head.weight"] - state["head.weight"]).max() < 0.1
    metrics_path = str(tmp_path / "ema.json")
    result = run_tool(EVAL, "-c", config_path, "--ckpt_path", os.path.join(out, "last.ckpt"), "--ema", "true",
                      "--metrics_out", metrics_path)
    assert result.returncode == 0, result.stderr
    metrics = json.load(open(metrics_path, encoding="utf-8"))
    assert metrics["top1"] == pytest.approx(record["ema_top1"])
