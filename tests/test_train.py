"""End-to-end training and evaluation (mindppt.engine.trainer.train in this process, tools/eval.py) in
GRAPH_MODE: what a good run writes and logs, that tools/eval.py reproduces the trainer's validation, and
the optional paths of the training step (EMA, clipping, loss scaling).

A tiny generated ImageFolder (3 classes of 16x16 patterns) and the small digits ViT keep this fast; one
2-epoch run is shared by the tests below. How the tools handle bad input, signals, kills, resuming and
a non-finite loss is tested through the tools in test_reliability.py.
"""
import json
import os

import mindspore as ms
import numpy as np
import pytest
import yaml
from tool_helpers import EVAL, ckpt_arrays, run_tool


def parse(argv):
    from mindppt.engine.cli import parse_cli as parse_args
    return parse_args(argv)


@pytest.fixture(scope="module")
def straight_run(tiny_config, tmp_path_factory):
    """An uninterrupted 2-epoch training, in this process (GRAPH_MODE)."""
    from mindppt.engine.trainer import train

    out = str(tmp_path_factory.mktemp("straight"))
    summary = train(parse(["-c", tiny_config, "--ckpt_save_dir", out]))
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
    assert saved["batch_size"] == 8 and saved["ckpt_save_dir"] == out
    # the checkpoint is a full training state
    state = ms.load_checkpoint(os.path.join(out, "last.ckpt"))
    assert int(state["meta_epoch"].asnumpy()) == 2 and int(state["meta_global_step"].asnumpy()) == 8
    assert int(state["global_step"].asnumpy().reshape(-1)[0]) == 8  # the optimizer's step (LR position)
    assert any(k.startswith("adam_m.") for k in state) and "head.weight" in state
    first = ms.load_checkpoint(os.path.join(out, "epoch_0001.ckpt"))
    assert int(first["meta_epoch"].asnumpy()) == 1 and int(first["meta_global_step"].asnumpy()) == 4


def test_eval_tool_reproduces_the_trainers_last_validation(straight_run, tiny_config, tmp_path):
    """tools/eval.py on the run's last.ckpt: the printed table, the metrics file, and the same top-1 and
    loss as the trainer's last validation (same weights, data and evaluation threshold)."""
    from mindppt.models import count_params, create_model
    from mindppt.models.flops import model_gmacs

    out, summary = straight_run
    metrics_path = str(tmp_path / "metrics.json")
    result = run_tool(EVAL, "-c", tiny_config, "--ckpt_path", os.path.join(out, "last.ckpt"),
                      "--metrics_out", metrics_path)
    assert result.returncode == 0, result
    assert "top-1" in result.stdout and "GMACs" in result.stdout and "img/s" in result.stdout
    assert f"metrics written to {metrics_path}" in result.stdout
    assert "PPT threshold 1," in result.stdout  # the evaluation threshold, not the training one (0)
    metrics = json.load(open(metrics_path, encoding="utf-8"))
    assert set(metrics) == {"top1", "top5", "loss", "gmacs", "params_m", "img_per_s", "num_samples"}
    assert metrics["num_samples"] == 12
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0
    assert metrics["top5"] == 100.0  # 3 classes
    assert metrics["top1"] == pytest.approx(summary["last_val"]["top1"])
    assert metrics["loss"] == pytest.approx(summary["last_val"]["loss"], rel=1e-4)
    assert 0.0 < metrics["loss"] < 5.0
    model = create_model("vit_digits_patch4_16", num_classes=3, img_size=16, r_tokens=4, pp_loc_list=(1, 2))
    assert [n for _, n in model.token_schedule] == [17, 13, 9, 9, 9, 9]
    assert metrics["gmacs"] == pytest.approx(model_gmacs(model))
    assert metrics["params_m"] == pytest.approx(count_params(model) / 1e6)
    assert metrics["img_per_s"] > 0


def test_ema_weights_are_validated_checkpointed_and_evaluated(tiny_config, tmp_path):
    """A run with EMA, gradient clipping and dynamic loss scaling (the optional paths of the training
    step, compiled together as the recipe builds them): the EMA weights are validated each epoch, saved
    in the checkpoint next to the weights, and tools/eval.py --ema true evaluates them, not the weights.
    What clipping and loss scaling compute is checked in test_train_step.py."""
    from mindppt.engine.trainer import train

    out = str(tmp_path / "ema")
    summary = train(parse(["-c", tiny_config, "--ckpt_save_dir", out, "--epoch_size", "1", "--warmup_epochs", "0",
                           "--ema", "true", "--ema_decay", "0.5", "--clip_grad", "true", "--clip_value", "1.0",
                           "--loss_scale_type", "dynamic", "--loss_scale", "256"]))
    record = summary["history"][0]
    assert 0.0 <= record["ema_top1"] <= 100.0 and record["ema_loss"] > 0
    assert record["ema_loss"] != pytest.approx(record["val_loss"], rel=1e-4)  # other weights, another loss
    state = ckpt_arrays(os.path.join(out, "last.ckpt"))
    assert float(state["scale_sense"]) == 256.0  # fp32: no overflow, and 4 steps are far from a doubling
    ema = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
    weights = {k for k in state if k.startswith(("blocks.", "head.", "norm.", "patch_embed.", "pos_embed", "cls"))
               and not k.endswith("ppt_threshold")}
    assert set(ema) == weights  # one average per trainable weight
    # decay 0.5 over 4 steps: the average trails the weights but is close to them
    assert not np.allclose(ema["head.weight"], state["head.weight"])
    assert np.abs(ema["head.weight"] - state["head.weight"]).max() < 0.1
    metrics_path = str(tmp_path / "ema.json")
    result = run_tool(EVAL, "-c", tiny_config, "--ckpt_path", os.path.join(out, "last.ckpt"), "--ema", "true",
                      "--metrics_out", metrics_path)
    assert result.returncode == 0, result
    assert "with the EMA weights of" in result.stdout
    metrics = json.load(open(metrics_path, encoding="utf-8"))
    assert metrics["top1"] == pytest.approx(record["ema_top1"])
    assert metrics["loss"] == pytest.approx(record["ema_loss"], rel=1e-4)
