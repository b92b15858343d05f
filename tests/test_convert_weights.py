"""Weight conversion: tools/convert_weights.py end to end (.pth, .safetensors and JAX .npz converted exactly
and the model inferred, an official-layout distilled DeiT .pth too, errors as one line with exit 2 and
nothing written, naming the model the weights look like), mindppt.engine.convert.convert_weights called
directly (its summary, a mismatch naming the fitting model, a destination that cannot be written), and the
converted weights in the PPT models give the logits of the independent NumPy reference
(tests/ppt_reference.py). The recognition of the model from the tensors alone: tests/test_registry.py."""
import os

import mindspore as ms
import numpy as np
import ppt_reference as reference
import pytest
from checkpoint_helpers import (
    TINY,
    assert_params_equal,
    model_shapes,
    random_state,
    write_jax_npz,
    write_pth,
    write_safetensors,
)
from decision_checks import FP32_LOGIT_RTOL, FP32_SCORE_RTOL, FP32_SIM_ATOL, Run, compare_runs, probe
from tool_helpers import CONVERT, ToolResult, assert_error, run_tool, start_tool

from mindppt.engine.convert import convert_weights
from mindppt.errors import CheckpointError, ConfigError, OutputError
from mindppt.formats import read_state_dict
from mindppt.models import create_model

TINY_DISTILLED = "deit_tiny_distilled_patch16_224"
DISTILLED_CLASSES = 10


@pytest.fixture(scope="module")
def tiny_state():
    return random_state(model_shapes(TINY), seed=0)


@pytest.fixture(scope="module")
def distilled_state():
    """Random DeiT-Ti-distilled weights (timm names: dist_token (1, 1, 192), pos_embed (1, 198, 192),
    head_dist), well conditioned for the reference comparison."""
    return reference.random_deit_params(0, num_classes=DISTILLED_CLASSES, distilled=True,
                                        **reference.deit_config("tiny"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_state, distilled_state):
    """The tiny state written as .pth, .safetensors and JAX .npz, and the distilled state as an official
    DeiT .pth ({"model": state_dict}), each converted by the CLI, plus one conversion against the wrong
    model. The CLI processes run concurrently (each imports MindSpore). ``out["dir"]``: the files."""
    d = tmp_path_factory.mktemp("convert")
    jobs = {}
    for fmt, writer, name, state in (("pth", write_pth, "deit_tiny.pth", tiny_state),
                                     ("safetensors", write_safetensors, "model.safetensors", tiny_state),
                                     ("npz", write_jax_npz, "ViT-Ti_16.npz", tiny_state),
                                     ("distilled", write_pth, "deit_tiny_distilled.pth", distilled_state)):
        src, dst = d / name, d / f"{fmt}.ckpt"
        writer(state, src)
        extra = ("--model", TINY) if fmt == "safetensors" else ()   # the others infer the model
        jobs[fmt] = (start_tool(CONVERT, "--src", src, "--dst", dst, *extra), dst)
    wrong = d / "wrong.ckpt"
    jobs["wrong_model"] = (start_tool(CONVERT, "--src", d / "model.safetensors", "--dst", wrong,
                                      "--model", "deit_small_patch16_224"), wrong)
    out = {}
    for key, (proc, dst) in jobs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[key] = (ToolResult(proc.args, proc.returncode, stdout, stderr), dst)
    out["dir"] = d
    return out


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "npz"])
def test_cli_converts_exactly(converted, tiny_state, fmt):
    res, dst = converted[fmt]
    assert res.returncode == 0, res
    assert "Traceback" not in res.stderr
    assert TINY in res.stdout and "152" in res.stdout
    if fmt != "safetensors":
        assert "inferred" in res.stdout
        assert "ViT AugReg weights have DeiT's shapes" in res.stdout and "--model vit_tiny_patch16_224" in res.stdout
    net = create_model(TINY, checkpoint_path=str(dst))
    assert_params_equal(net, tiny_state)
    # the MindSpore .ckpt is itself readable by read_state_dict
    again = read_state_dict(dst)
    assert set(again) == set(tiny_state)


def test_cli_errors_exit_2_without_traceback(tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("not a checkpoint")
    missing = tmp_path / "missing.pth"
    for src in (text, missing):
        assert_error(run_tool(CONVERT, "--src", src, "--dst", tmp_path / "o.ckpt", timeout=300), src)
    assert not (tmp_path / "o.ckpt").exists()


def test_cli_mismatch_exits_2(converted):
    res, dst = converted["wrong_model"]
    assert_error(res, "does not match model deit_small_patch16_224", "shape mismatch",
                 "the checkpoint's embed dim is 192, the model's 384", "pass --model deit_tiny_patch16_224")
    assert not dst.exists()


def test_converted_ppt_model_matches_reference(converted, tiny_state):
    _, dst = converted["pth"]
    images = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype(np.float32)
    old_mode = ms.get_context("mode")
    try:
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device("CPU")
        net = create_model("ppt_deit_tiny_patch16_224", checkpoint_path=str(dst))
        net.set_train(False)
        logits = net(ms.Tensor(images)).asnumpy()
    finally:
        ms.set_context(mode=old_mode)
    ref, infos = reference.reference_forward(tiny_state, images, num_heads=3, r_tokens=50,
                                             pp_loc_list=(3, 6, 9), threshold=7e-5, prop_attn=True)
    # with these weights and images the reference pools at blocks 3 and 6 and mixes the policies at
    # block 9 (image 0 pools, image 1 prunes), each variance >= 1% away from the threshold
    pools = np.stack([info["pool"] for info in infos])
    assert pools.any() and not pools.all()
    variances = np.stack([info["variance"] for info in infos])
    assert np.all(np.abs(variances / 7e-5 - 1) > 0.01)
    rel = np.abs(logits - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, rel


# --------------------------------------------------------------------------------------------
# Distilled DeiT
# --------------------------------------------------------------------------------------------

def test_cli_converts_official_distilled_pth(converted, distilled_state):
    res, dst = converted["distilled"]
    assert res.returncode == 0, res
    assert f"model: {TINY_DISTILLED} (inferred from a distillation token, embed dim 192, depth 12" in res.stdout
    assert "loaded 155 of 155 parameters" in res.stdout and "AugReg" not in res.stdout
    src = read_state_dict(converted["dir"] / "deit_tiny_distilled.pth")
    assert src["dist_token"].shape == (1, 1, 192) and src["pos_embed"].shape == (1, 198, 192)
    assert src["head_dist.weight"].shape == (DISTILLED_CLASSES, 192)
    net = create_model(TINY_DISTILLED, num_classes=DISTILLED_CLASSES, checkpoint_path=str(dst))
    assert_params_equal(net, distilled_state)


def test_converted_distilled_ppt_model_matches_reference(converted, distilled_state, pynative):
    """The converted checkpoint in ppt_deit_tiny_distilled_patch16_224 (paper defaults) against the reference.
    PYNATIVE_MODE: the weights are the subject here (test_distilled.py covers the graph)."""
    _, dst = converted["distilled"]
    images = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype(np.float32)
    net = create_model("ppt_deit_tiny_distilled_patch16_224", num_classes=DISTILLED_CLASSES,
                       checkpoint_path=str(dst), trace_source=True)
    threshold = net.thresholds[0]
    ours = Run.from_model("converted", *probe(net, images), threshold)
    ref = Run.from_reference("reference", *reference.reference_forward(
        distilled_state, images, num_heads=3, r_tokens=50, pp_loc_list=(3, 6, 9), threshold=threshold), threshold)
    agree = compare_runs(ours, ref, score_rtol=FP32_SCORE_RTOL, sim_atol=FP32_SIM_ATOL)
    assert agree.all() and ours.num_protected == 2
    rel = np.abs(ours.logits - ref.logits).max() / np.abs(ref.logits).max()
    assert rel < FP32_LOGIT_RTOL, rel


@pytest.mark.parametrize("src, model, needles", [
    ("deit_tiny_distilled.pth", TINY,
     ("is a distilled DeiT", f"{TINY} has no distillation token", f"pass --model {TINY_DISTILLED}")),
    ("deit_tiny_distilled.pth", "ppt_deit_tiny_patch16_224",
     ("is a distilled DeiT", f"pass --model ppt_{TINY_DISTILLED}")),
    ("deit_tiny.pth", TINY_DISTILLED,
     ("has no distillation token (dist_token, head_dist)", f"{TINY_DISTILLED} is a distilled DeiT",
      f"pass --model {TINY}")),
], ids=["distilled_into_plain", "distilled_into_ppt_plain", "plain_into_distilled"])
def test_distilled_mismatch_names_the_fitting_model(converted, tmp_path, src, model, needles):
    src, dst = converted["dir"] / src, tmp_path / "out.ckpt"
    with pytest.raises(CheckpointError) as caught:
        convert_weights(src, dst, model=model)
    message = str(caught.value)
    assert f"checkpoint {src}" in message and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not dst.exists()


def test_convert_weights_summary_and_dropped_head(converted, tiny_state, tmp_path):
    src = converted["dir"] / "deit_tiny.pth"
    summary = convert_weights(src, tmp_path / "tiny.ckpt")
    assert summary["model"] == TINY and summary["inferred_from"] == "embed dim 192, depth 12"
    assert summary["same_shapes"] == ["vit_tiny_patch16_224"] and summary["num_classes"] == 1000
    assert summary["tensors"] == len(tiny_state) == len(summary["loaded"]) == 152
    assert summary["not_loaded"] == [] and summary["dst"] == str(tmp_path / "tiny.ckpt")
    assert summary["parameters"] == sum(int(np.prod(a.shape)) for a in tiny_state.values())
    # named model, another class count: the head is dropped with a warning, the model keeps its own
    with pytest.warns(UserWarning, match="classifier head has a different shape"):
        summary = convert_weights(src, tmp_path / "tiny_5.ckpt", model=f"ppt_{TINY}", num_classes=5)
    assert summary["inferred_from"] is None and summary["same_shapes"] == []
    assert sorted(summary["not_loaded"]) == ["head.bias", "head.weight"] and len(summary["loaded"]) == 150
    net = create_model(TINY, num_classes=5, checkpoint_path=str(tmp_path / "tiny_5.ckpt"))
    np.testing.assert_array_equal(net.cls_token.asnumpy(), tiny_state["cls_token"])


def test_convert_weights_refuses_bad_arguments_before_writing(converted, tmp_path):
    src = converted["dir"] / "deit_tiny.pth"
    with pytest.raises(ConfigError, match="unknown model 'deit_tiny'; did you mean"):
        convert_weights(src, tmp_path / "a.ckpt", model="deit_tiny")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OutputError) as caught:
        convert_weights(src, blocker / "out.ckpt")
    assert str(caught.value) == f"cannot write {blocker / 'out.ckpt'}: {blocker} is not a directory"
    (tmp_path / "folder.ckpt").mkdir()
    with pytest.raises(OutputError) as caught:
        convert_weights(src, tmp_path / "folder.ckpt")
    assert str(caught.value) == f"cannot write {tmp_path / 'folder.ckpt'}: it is a directory"
    assert sorted(os.listdir(tmp_path)) == ["file", "folder.ckpt"] and not os.listdir(tmp_path / "folder.ckpt")
