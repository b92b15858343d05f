"""tools/convert_weights.py end to end: .pth, .safetensors and JAX .npz converted exactly (and the model
inferred), an official-layout distilled DeiT .pth too, errors as one line with exit 2 and nothing written
(naming the model the weights look like), the model inferred from the tensors' names and shapes, and the
converted weights in the PPT models give the logits of the independent NumPy reference
(tests/ppt_reference.py)."""
import importlib.util

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

from mindppt.formats import read_state_dict
from mindppt.models import create_model

# the tool as a module, for infer_model_name and in-process runs of main() (no MindSpore start-up per case)
_SPEC = importlib.util.spec_from_file_location("convert_weights_tool", CONVERT)
convert_tool = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(convert_tool)

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


def run_main(capsys, *argv):
    """tools/convert_weights.main in this process: (exit status, stdout, stderr)."""
    status = convert_tool.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return ToolResult(("convert_weights",) + argv, status, captured.out, captured.err)


@pytest.mark.parametrize("src, model, needles", [
    ("deit_tiny_distilled.pth", TINY,
     ("is a distilled DeiT", f"{TINY} has no distillation token", f"pass --model {TINY_DISTILLED}")),
    ("deit_tiny_distilled.pth", "ppt_deit_tiny_patch16_224",
     ("is a distilled DeiT", f"pass --model ppt_{TINY_DISTILLED}")),
    ("deit_tiny.pth", TINY_DISTILLED,
     ("has no distillation token (dist_token, head_dist)", f"{TINY_DISTILLED} is a distilled DeiT",
      f"pass --model {TINY}")),
], ids=["distilled_into_plain", "distilled_into_ppt_plain", "plain_into_distilled"])
def test_distilled_mismatch_is_one_line_naming_the_fitting_model(converted, tmp_path, capsys, src, model, needles):
    src, dst = converted["dir"] / src, tmp_path / "out.ckpt"
    res = run_main(capsys, "--src", src, "--dst", dst, "--model", model)
    assert_error(res, f"checkpoint {src}", *needles)
    assert not dst.exists()


# --------------------------------------------------------------------------------------------
# The model inferred from names and shapes (no model built)
# --------------------------------------------------------------------------------------------

def shapes_state(dim, depth, positions, *extra):
    """A state dict of zero-strided arrays with a ViT's inference-relevant names and shapes."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, positions, dim), "patch_embed.proj.weight": (dim, 3, 16, 16)}
    shapes.update({f"blocks.{i}.norm1.weight": (dim,) for i in range(depth)})
    shapes.update(extra)
    return {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}


DIST = ("dist_token", (1, 1, 192))


@pytest.mark.parametrize("state, name", [
    (shapes_state(192, 12, 197), "deit_tiny_patch16_224"),
    (shapes_state(384, 12, 197), "deit_small_patch16_224"),
    (shapes_state(768, 12, 197), "deit_base_patch16_224"),
    (shapes_state(192, 12, 198, DIST), "deit_tiny_distilled_patch16_224"),
    (shapes_state(384, 12, 198, ("dist_token", (1, 1, 384))), "deit_small_distilled_patch16_224"),
    (shapes_state(768, 12, 198, ("dist_token", (1, 1, 768))), "deit_base_distilled_patch16_224"),
    (shapes_state(768, 12, 577), "deit_base_patch16_384"),
    (shapes_state(384, 16, 197, ("patch_embed.conv1.weight", (64, 3, 7, 7)), ("aux_head.weight", (1000, 384))),
     "lvvit_s"),
    (shapes_state(384, 16, 197, ("patch_embed.conv.0.weight", (64, 3, 7, 7)), ("aux_head.weight", (1000, 384))),
     "lvvit_s"),
], ids=["tiny", "small", "base", "tiny_distilled", "small_distilled", "base_distilled", "base_384", "lvvit_s",
        "lvvit_s_sequential_stem"])
def test_infer_model_name(state, name):
    assert convert_tool.infer_model_name(state)[0] == name


@pytest.mark.parametrize("state, needle", [
    (shapes_state(768, 12, 578, ("dist_token", (1, 1, 768))), "578 position embeddings, a distillation token"),
    (shapes_state(192, 12, 577), "embed dim 192, depth 12, 577 position embeddings"),
    (shapes_state(256, 12, 197), "embed dim 256"),
    (shapes_state(384, 12, 197, ("patch_embed.conv1.weight", (64, 3, 7, 7)), ("aux_head.weight", (1000, 384))),
     "LV-ViT checkpoint of embed dim 384 and depth 12"),
], ids=["distilled_384", "tiny_384", "other_width", "lvvit_depth_12"])
def test_infer_model_name_refuses_unknown_shapes(state, needle):
    with pytest.raises(convert_tool.UserError, match="pass --model") as caught:
        convert_tool.infer_model_name(state)
    assert needle in str(caught.value)
