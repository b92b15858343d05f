"""tools/convert_weights.py end to end: .pth, .safetensors and JAX .npz converted exactly (and the model
inferred), errors as one line with exit 2 and nothing written, and the converted weights in the PPT model
give the logits of the independent NumPy reference (tests/ppt_reference.py)."""
import mindspore as ms
import numpy as np
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
from tool_helpers import CONVERT, ToolResult, assert_error, run_tool, start_tool

from mindppt.formats import read_state_dict
from mindppt.models import create_model


@pytest.fixture(scope="module")
def tiny_state():
    return random_state(model_shapes(TINY), seed=0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_state):
    """The tiny state written as .pth, .safetensors and JAX .npz, each converted by the CLI, plus one
    conversion against the wrong model. The CLI processes run concurrently (each imports MindSpore)."""
    d = tmp_path_factory.mktemp("convert")
    jobs = {}
    for fmt, writer, name in (("pth", write_pth, "deit_tiny.pth"),
                              ("safetensors", write_safetensors, "model.safetensors"),
                              ("npz", write_jax_npz, "ViT-Ti_16.npz")):
        src, dst = d / name, d / f"{fmt}.ckpt"
        writer(tiny_state, src)
        extra = ("--model", TINY) if fmt == "safetensors" else ()   # the others infer deit_tiny
        jobs[fmt] = (start_tool(CONVERT, "--src", src, "--dst", dst, *extra), dst)
    wrong = d / "wrong.ckpt"
    jobs["wrong_model"] = (start_tool(CONVERT, "--src", d / "model.safetensors", "--dst", wrong,
                                      "--model", "deit_small_patch16_224"), wrong)
    out = {}
    for key, (proc, dst) in jobs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[key] = (ToolResult(proc.args, proc.returncode, stdout, stderr), dst)
    return out


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "npz"])
def test_cli_converts_exactly(converted, tiny_state, fmt):
    res, dst = converted[fmt]
    assert res.returncode == 0, res
    assert "Traceback" not in res.stderr
    assert TINY in res.stdout and "152" in res.stdout
    if fmt != "safetensors":
        assert "inferred" in res.stdout
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
                 "the checkpoint's embed dim is 192, the model's 384")
    assert not dst.exists()


def test_converted_ppt_model_matches_reference(converted, tiny_state):
    import ppt_reference as reference  # tests/ is on sys.path
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
