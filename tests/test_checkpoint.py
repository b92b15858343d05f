"""Checkpoint readers, conversion, loading, atomic saving and the convert_weights CLI.

torch and safetensors are used here only to *write* reference files (and torch.load to cross-check
the torch-free reader); mindppt itself never imports torch.
"""
import errno
import os
import pickle
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

import mindspore as ms

from mindppt.errors import CheckpointError
from mindppt.formats import jax_vit_to_timm, read_state_dict
from mindppt.models import create_model
from mindppt.models.weights import convert_state_dict, load_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(REPO, "tools", "convert_weights.py")
TINY = "deit_tiny_patch16_224"


# ---------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------

def _shapes(model_name, **kwargs):
    net = create_model(model_name, **kwargs)
    return {p.name: tuple(p.shape) for _, p in net.parameters_and_names()}


def _random_state(shapes, seed):
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            arr = 0.02 * rng.standard_normal(shape)
        state[name] = arr.astype(np.float32)
    return state


@pytest.fixture(scope="module")
def tiny_shapes():
    return _shapes(TINY)


@pytest.fixture(scope="module")
def tiny_state(tiny_shapes):
    return _random_state(tiny_shapes, seed=0)


@pytest.fixture(scope="module")
def tiny_model():
    return create_model(TINY)


def _torch_save(obj, path):
    import torch  # test-only dependency

    torch.save(obj, str(path))


def _to_torch(state):
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def _run_convert(*args):
    return subprocess.run([sys.executable, CONVERT, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def _start_convert(*args):
    return subprocess.Popen([sys.executable, CONVERT, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def _model_params(net):
    return {p.name: p.asnumpy() for _, p in net.parameters_and_names()}


def _assert_params_equal(net, state, skip=()):
    params = _model_params(net)
    assert set(params) == set(state)
    for name, value in state.items():
        if name in skip:
            continue
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], value, err_msg=name)


# JAX/Flax ViT layout written independently of the reader (the inverse of timm's layout)
def _timm_to_jax(state, big_vision=False):
    prefix = "params/" if big_vision else ""
    ln2, mha, mlp = (1, 0, 0) if big_vision else (2, 1, 3)
    out = {
        "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": state["patch_embed.proj.bias"],
        "cls": state["cls_token"],
        "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
        "head/kernel": state["head.weight"].T,
        "head/bias": state["head.bias"],
    }
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    dim = state["cls_token"].shape[-1]
    heads = 3
    for i in range(depth):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[b + "LayerNorm_0/scale"] = state[t + "norm1.weight"]
        out[b + "LayerNorm_0/bias"] = state[t + "norm1.bias"]
        out[b + f"LayerNorm_{ln2}/scale"] = state[t + "norm2.weight"]
        out[b + f"LayerNorm_{ln2}/bias"] = state[t + "norm2.bias"]
        a = b + f"MultiHeadDotProductAttention_{mha}/"
        qw = np.split(state[t + "attn.qkv.weight"], 3, axis=0)
        qb = np.split(state[t + "attn.qkv.bias"], 3, axis=0)
        for n, w_, b_ in zip(("query", "key", "value"), qw, qb):
            out[a + f"{n}/kernel"] = w_.T.reshape(dim, heads, dim // heads)
            out[a + f"{n}/bias"] = b_.reshape(heads, dim // heads)
        out[a + "out/kernel"] = state[t + "attn.proj.weight"].T.reshape(heads, dim // heads, dim)
        out[a + "out/bias"] = state[t + "attn.proj.bias"]
        for j, fc in ((0, "fc1"), (1, "fc2")):
            out[b + f"MlpBlock_{mlp}/Dense_{j}/kernel"] = state[t + f"mlp.{fc}.weight"].T
            out[b + f"MlpBlock_{mlp}/Dense_{j}/bias"] = state[t + f"mlp.{fc}.bias"]
    return {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------

def test_torch_reader_matches_torch_load(tmp_path):
    import argparse

    import torch

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, 6, generator=g)
    sd = {
        "f32": torch.randn(3, 4, generator=g),
        "param": torch.nn.Parameter(torch.randn(5, generator=g)),
        "transposed": torch.randn(4, 6, generator=g).t(),          # non-contiguous strides
        "permuted_slice": base.permute(2, 0, 1)[1:, :, ::2],        # offset + odd strides
        "view_of_other": base[2, 1],                                # shares storage with base
        "base": base,
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "i32": torch.arange(3, dtype=torch.int32),
        "u8": torch.arange(4, dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "many.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 7,
                "args": argparse.Namespace(lr=1e-3, model="deit_small")}, str(path))
    ours = read_state_dict(path)
    ref = torch.load(str(path), weights_only=False)["model"]
    assert set(ours) == set(sd)                                      # module. prefix stripped
    for key, tensor in ref.items():
        name = key[len("module."):]
        expected = (tensor.detach().float() if tensor.dtype == torch.bfloat16 else tensor.detach()).numpy()
        assert ours[name].dtype == expected.dtype, name
        assert ours[name].shape == expected.shape, name
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)
    assert ours["bf16"].dtype == np.float32


@pytest.mark.parametrize("layout,expect", [
    ({"model": "A", "model_ema": "B", "state_dict": "C"}, "A"),
    ({"state_dict": "C", "model_ema": "B"}, "C"),
    ({"model_ema": "B", "epoch": 3}, "B"),
    ("A", "A"),
])
def test_state_dict_location(tmp_path, layout, expect):
    import torch

    dicts = {k: {"w": torch.full((2,), float(ord(k)))} for k in "ABC"}
    obj = dicts[layout] if isinstance(layout, str) else {k: dicts.get(v, v) for k, v in layout.items()}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, str(path))
    np.testing.assert_array_equal(read_state_dict(path)["w"], np.full((2,), float(ord(expect)), np.float32))


def test_safetensors_reader(tmp_path):
    import torch
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file as save_torch

    rng = np.random.default_rng(1)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "f64": rng.standard_normal((2, 2)),
        "i64": np.arange(6, dtype=np.int64).reshape(3, 2),
        "i32": np.arange(4, dtype=np.int32),
        "scalar": np.array(1.5, dtype=np.float32),
    }
    save_np(arrays, str(tmp_path / "a.safetensors"), metadata={"format": "np"})
    ours = read_state_dict(tmp_path / "a.safetensors")
    for k, v in arrays.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        np.testing.assert_array_equal(ours[k], v)

    bf = torch.randn(3, 5).bfloat16()
    save_torch({"bf16": bf}, str(tmp_path / "b.safetensors"))
    got = read_state_dict(tmp_path / "b.safetensors")["bf16"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, bf.float().numpy())


def test_npz_timm_names(tmp_path, tiny_state):
    np.savez(tmp_path / "w.npz", **tiny_state)
    got = read_state_dict(tmp_path / "w.npz")
    assert set(got) == set(tiny_state)
    for k, v in tiny_state.items():
        np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("big_vision", [False, True])
def test_npz_jax_layout(tmp_path, tiny_state, big_vision):
    path = tmp_path / "jax.npz"
    np.savez(path, **_timm_to_jax(tiny_state, big_vision=big_vision))
    got = read_state_dict(path)
    assert set(got) == set(tiny_state)
    for k, v in tiny_state.items():
        assert got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_jax_unknown_keys_are_kept_for_the_mismatch_check(tiny_state):
    jax = _timm_to_jax(tiny_state)
    jax["MAPHead_0/probe"] = np.zeros((1, 1, 192), np.float32)
    assert "MAPHead_0/probe" in jax_vit_to_timm(jax)


# ---------------------------------------------------------------------------------------------------
# unreadable and hostile files
# ---------------------------------------------------------------------------------------------------

def test_text_file_renamed_pth(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.pth") as err:
        read_state_dict(path)
    assert "safetensors" in str(err.value) and "PyTorch" in str(err.value)


def test_random_bytes_and_missing_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match="blob.bin"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")


def test_truncated_pth(tmp_path, tiny_state):
    full = tmp_path / "full.pth"
    _torch_save({"model": _to_torch(dict(list(tiny_state.items())[:6]))}, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*(truncated|corrupt)"):
        read_state_dict(cut)


def test_truncated_safetensors(tmp_path):
    from safetensors.numpy import save_file

    full = tmp_path / "w.safetensors"
    save_file({"a": np.ones((64, 64), np.float32)}, str(full))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated"):
        read_state_dict(cut)


def test_bogus_mindspore_ckpt(tmp_path):
    path = tmp_path / "bogus.ckpt"
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="bogus.ckpt"):
        read_state_dict(path)


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsExec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def test_pickle_that_runs_code_is_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsShell(f"echo pwned > {marker}")}, str(path))
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "refusing to load" in msg and "system" in msg and "evil.pth" in msg
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes
def test_handmade_zip_with_exec_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil2.pth"
    payload = pickle.dumps({"model": _RunsExec(f"open({str(marker)!r}, 'w').write('x')")}, protocol=protocol)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    with pytest.raises(CheckpointError, match=r"refusing to load (builtins|__builtin__)\.exec from .*evil2\.pth"):
        read_state_dict(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# conversion against a model
# ---------------------------------------------------------------------------------------------------

def test_small_checkpoint_into_tiny_model(tmp_path, tiny_model):
    small = _random_state(_shapes("deit_small_patch16_224"), seed=3)
    path = tmp_path / "deit_small.pth"
    _torch_save({"model": _to_torch(small)}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(tiny_model, path, model_name=TINY)
    msg = str(err.value)
    assert "deit_small.pth" in msg and TINY in msg
    assert "shape mismatch" in msg
    assert "blocks.0.attn.qkv.weight: file (1152, 384) vs model (576, 192)" in msg
    assert "embed dim is 384" in msg
    assert sorted(err.value.mismatched) == sorted(k for k in small if k != "head.bias")  # (1000,) fits


def test_unexpected_key_is_named(tiny_state, tiny_model):
    state = dict(tiny_state, **{"blocks.0.attn.extra_scale": np.ones(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected \[blocks\.0\.attn\.extra_scale\]") as err:
        convert_state_dict(state, tiny_model, source="x.pth")
    assert "missing" not in str(err.value) and err.value.unexpected == ["blocks.0.attn.extra_scale"]


def test_missing_key_is_named(tiny_state, tiny_model):
    state = {k: v for k, v in tiny_state.items() if k != "blocks.3.mlp.fc1.bias"}
    with pytest.raises(CheckpointError, match=r"x\.pth does not match .*missing \[blocks\.3\.mlp\.fc1\.bias\]"):
        convert_state_dict(state, tiny_model, source="x.pth")


def test_non_strict_warns_instead(tiny_state, tiny_model):
    state = {k: v for k, v in tiny_state.items() if k != "norm.bias"}
    state["extra"] = np.zeros(1, np.float32)
    with pytest.warns(UserWarning, match=r"missing \[norm\.bias\].*unexpected \[extra\]"):
        out = convert_state_dict(state, tiny_model, strict=False)
    assert "norm.bias" not in out and "extra" not in out


def test_distilled_checkpoint_is_refused(tiny_state, tiny_model):
    state = dict(tiny_state)
    state["dist_token"] = np.zeros((1, 1, 192), np.float32)
    state["head_dist.weight"] = np.zeros((1000, 192), np.float32)
    with pytest.raises(CheckpointError, match="distilled"):
        convert_state_dict(state, tiny_model, source="deit_tiny_distilled.pth")


def test_different_num_classes_drops_head_with_warning(tmp_path, tiny_state):
    path = tmp_path / "tiny.safetensors"
    from safetensors.numpy import save_file

    save_file(tiny_state, str(path))
    with pytest.warns(UserWarning, match=r"head\.weight \(1000, 192\) vs model \(10, 192\).*dropping"):
        net = create_model(TINY, num_classes=10, checkpoint_path=str(path))
    params = _model_params(net)
    assert params["head.weight"].shape == (10, 192)
    for k, v in tiny_state.items():
        if not k.startswith("head."):
            np.testing.assert_array_equal(params[k], v, err_msg=k)


# ---------------------------------------------------------------------------------------------------
# end to end through tools/convert_weights.py
# ---------------------------------------------------------------------------------------------------

def _write_pth(state, path):
    import torch

    sd = _to_torch(state)
    # store one weight transposed (non-contiguous), as a real training run can
    sd["blocks.0.mlp.fc1.weight"] = torch.from_numpy(np.ascontiguousarray(state["blocks.0.mlp.fc1.weight"].T)).t()
    torch.save({"model": sd, "epoch": 299}, str(path))


def _write_safetensors(state, path):
    from safetensors.numpy import save_file

    save_file(state, str(path))


def _write_jax_npz(state, path):
    np.savez(path, **_timm_to_jax(state))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_state):
    """The tiny state written as .pth, .safetensors and JAX .npz, each converted by the CLI, plus one
    conversion against the wrong model. The CLI processes run concurrently (each imports MindSpore)."""
    d = tmp_path_factory.mktemp("convert")
    jobs = {}
    for fmt, writer, name in (("pth", _write_pth, "deit_tiny.pth"),
                              ("safetensors", _write_safetensors, "model.safetensors"),
                              ("npz", _write_jax_npz, "ViT-Ti_16.npz")):
        src, dst = d / name, d / f"{fmt}.ckpt"
        writer(tiny_state, src)
        extra = ("--model", TINY) if fmt == "safetensors" else ()   # the others infer deit_tiny
        jobs[fmt] = (_start_convert("--src", src, "--dst", dst, *extra), dst)
    wrong = d / "wrong.ckpt"
    jobs["wrong_model"] = (_start_convert("--src", d / "model.safetensors", "--dst", wrong,
                                          "--model", "deit_small_patch16_224"), wrong)
    out = {}
    for key, (proc, dst) in jobs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[key] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), dst)
    return out


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "npz"])
def test_cli_converts_exactly(converted, tiny_state, fmt):
    res, dst = converted[fmt]
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert TINY in res.stdout and "152" in res.stdout
    if fmt != "safetensors":
        assert "inferred" in res.stdout
    net = create_model(TINY, checkpoint_path=str(dst))
    _assert_params_equal(net, tiny_state)
    # the MindSpore .ckpt is itself readable by read_state_dict
    again = read_state_dict(dst)
    assert set(again) == set(tiny_state)


def test_cli_errors_exit_2_without_traceback(tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("not a checkpoint")
    for args in (("--src", text, "--dst", tmp_path / "o.ckpt"),
                 ("--src", tmp_path / "missing.pth", "--dst", tmp_path / "o.ckpt")):
        res = _run_convert(*args)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and str(args[1].name) in lines[0]
    assert not (tmp_path / "o.ckpt").exists()


def test_cli_mismatch_exits_2(converted):
    res, dst = converted["wrong_model"]
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "error: checkpoint" in res.stderr and "shape mismatch" in res.stderr
    assert "deit_small_patch16_224" in res.stderr
    assert not dst.exists()


# ---------------------------------------------------------------------------------------------------
# logits parity with the independent NumPy reference
# ---------------------------------------------------------------------------------------------------

def test_converted_ppt_model_matches_reference(converted, tiny_state):
    import ppt_reference as reference  # pylint: disable=import-outside-toplevel  (tests/ is on sys.path)
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


def test_warnings_module_is_clean_on_exact_match(tiny_state, tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = convert_state_dict(tiny_state, tiny_model)
    assert list(out) == [p.name for _, p in tiny_model.parameters_and_names()]


def test_big_endian_torch_archive(tmp_path):
    import torch

    sd = {"f": torch.randn(3, 4).t(), "i": torch.arange(5), "h": torch.randn(2).half()}
    little = tmp_path / "le.pth"
    torch.save({"model": sd}, str(little))
    # rewrite as a big-endian machine would have written it: byteorder file + swapped storages
    dtypes = {"f": np.float32, "i": np.int64, "h": np.float16}
    ref = {k: v.numpy().copy() for k, v in sd.items()}
    big = tmp_path / "be.pth"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        prefix = [n for n in src.namelist() if n.endswith("/data.pkl")][0].split("/")[0]
        keys = {str(i): name for i, name in enumerate(sd)}  # torch numbers storages in pickling order
        for item in src.namelist():
            data = src.read(item)
            if item == f"{prefix}/byteorder":
                data = b"big"
            elif item.startswith(f"{prefix}/data/"):
                data = np.frombuffer(data, dtypes[keys[item.rsplit("/", 1)[1]]]).byteswap().tobytes()
            dst.writestr(item, data)
    got = read_state_dict(big)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)
