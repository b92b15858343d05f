"""mindppt.formats: every checkpoint reader into ``{timm name: numpy array}`` -- the torch zip reader
(without torch, restricted unpickler), safetensors, npz with timm or JAX names, MindSpore .ckpt -- and
:func:`read_state_dict`, which picks the reader from the file's bytes, not its name.

torch and safetensors are used here only to *write* reference files (and torch.load to cross-check the
torch-free reader).
"""
import os
import pickle
import zipfile

import mindspore as ms
import numpy as np
import pytest
from checkpoint_helpers import TINY, model_shapes, random_state, timm_to_jax, to_torch, torch_save, write_safetensors

from mindppt.errors import CheckpointError
from mindppt.formats import jax_vit_to_timm, read_state_dict


@pytest.fixture(scope="module")
def tiny_state():
    return random_state(model_shapes(TINY), seed=0)


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
    np.savez(path, **timm_to_jax(tiny_state, big_vision=big_vision))
    got = read_state_dict(path)
    assert set(got) == set(tiny_state)
    for k, v in tiny_state.items():
        assert got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_jax_unknown_keys_are_kept_for_the_mismatch_check(tiny_state):
    jax = timm_to_jax(tiny_state)
    jax["MAPHead_0/probe"] = np.zeros((1, 1, 192), np.float32)
    assert "MAPHead_0/probe" in jax_vit_to_timm(jax)


def test_mindspore_ckpt_reader(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"blocks.0.attn.qkv.weight": rng.standard_normal((6, 2)).astype(np.float32),
              "f16": rng.standard_normal(3).astype(np.float16), "i32": np.arange(4, dtype=np.int32)}
    path = tmp_path / "w.ckpt"
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()], str(path),
                       append_dict={"note": "a string entry", "epoch": 3})
    got = read_state_dict(path)
    assert set(got) == set(arrays) | {"epoch"}  # strings are not tensors
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)


def test_bfloat16_ckpt_is_read_as_float32_exactly(tmp_path):
    """Like the torch and safetensors readers: bfloat16 comes back as float32 (exact)."""
    values = np.array([1.0, -2.5, 0.15625], np.float32)  # exact in bfloat16
    path = tmp_path / "bf16.ckpt"
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(values).astype(ms.bfloat16)}], str(path))
    got = read_state_dict(path)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values)


# ---------------------------------------------------------------------------------------------------
# dispatch: the reader is chosen by content
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,name", [
    ("torch", "weights.bin"), ("torch", "weights.ckpt"),
    ("safetensors", "weights.pth"), ("safetensors", "weights"),
    ("npz", "weights.pth"), ("jax_npz", "weights.zip"),
    ("ckpt", "weights.ckpt"),
])
def test_reader_is_chosen_by_content_not_name(tmp_path, tiny_state, fmt, name):
    """The same weights written in each format under a misleading or missing extension read back the same.
    (A MindSpore .ckpt has no magic bytes: it is the one format recognised by its extension.)"""
    state = tiny_state
    path = tmp_path / name
    if fmt == "torch":
        torch_save({"model": to_torch(state)}, path)
    elif fmt == "safetensors":
        write_safetensors(state, path)
    elif fmt == "npz":
        with open(path, "wb") as f:
            np.savez(f, **state)
    elif fmt == "jax_npz":
        with open(path, "wb") as f:
            np.savez(f, **timm_to_jax(state))
    else:
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in state.items()], str(path))
    got = read_state_dict(path)
    assert set(got) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_legacy_torch_pickle_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "old.pth"
    path.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}}, protocol=2))  # torch < 1.6: a bare pickle
    with pytest.raises(CheckpointError, match=r"old\.pth looks like a legacy .*re-save it with a recent torch.save"):
        read_state_dict(path)


def test_zip_that_is_neither_torch_nor_npz(tmp_path):
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(CheckpointError, match="photos.zip is a zip archive but neither a PyTorch checkpoint nor"):
        read_state_dict(path)


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
    torch_save({"model": to_torch(dict(list(tiny_state.items())[:6]))}, full)
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
