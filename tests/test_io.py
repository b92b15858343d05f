"""Atomic output: a failed or interrupted write leaves the previous file whole and no temporary file."""
import errno
import os

import mindspore as ms
import numpy as np
import pytest

from mindppt.errors import USER_ERRORS, OutputError
from mindppt.formats import read_state_dict
from mindppt.io import atomic_write, check_writable, link_or_copy, save_checkpoint_atomic


def _save(arrays, path):
    return save_checkpoint_atomic([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], path)


def _params(value):
    return {"w": np.full((4, 3), value, np.float32), "b": np.arange(3, dtype=np.float32) + value}


def test_save_atomic_roundtrip_and_overwrite(tmp_path):
    path = tmp_path / "model.ckpt"
    _save(_params(1.0), path)
    _save(_params(2.0), path)          # overwrite (MindSpore leaves files read-only)
    got = read_state_dict(path)
    for k, v in _params(2.0).items():
        np.testing.assert_array_equal(got[k], v)
    save_checkpoint_atomic([{"name": "w", "data": ms.Tensor(np.ones(2, np.float32))}], path,
                           append_dict={"epoch": 5})
    loaded = ms.load_checkpoint(str(path))
    assert int(loaded["epoch"].asnumpy()) == 5
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk_full", "interrupted"])
def test_failed_or_interrupted_save_keeps_existing_checkpoint(tmp_path, monkeypatch, fault):
    path = tmp_path / "last.ckpt"
    _save(_params(1.0), path)
    before = path.read_bytes()

    def failing_save(save_obj, ckpt_file_name, *args, **kwargs):
        with open(ckpt_file_name, "wb") as f:
            f.write(b"\x0a\x05partial")
        raise fault

    monkeypatch.setattr(ms, "save_checkpoint", failing_save)
    with pytest.raises(type(fault)) as err:
        _save(_params(2.0), path)
    if isinstance(fault, OSError):
        assert err.value.errno == errno.ENOSPC and str(path) in str(err.value)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    monkeypatch.undo()
    np.testing.assert_array_equal(read_state_dict(path)["w"], _params(1.0)["w"])


def test_atomic_write_text_and_bytes_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "metrics.json"
    atomic_write(path, "{\"top1\": 1}\n")
    assert path.read_text() == "{\"top1\": 1}\n"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        atomic_write(path, "new")
    assert path.read_bytes() == b"\x00\x01" and os.listdir(path.parent) == ["metrics.json"]


def test_link_or_copy_snapshots_a_file(tmp_path):
    src = tmp_path / "last.ckpt"
    src.write_bytes(b"abc")
    (tmp_path / "best.ckpt").write_bytes(b"old")
    link_or_copy(src, tmp_path / "best.ckpt")
    assert (tmp_path / "best.ckpt").read_bytes() == b"abc"
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt", "last.ckpt"]  # no temporary file left


def test_an_output_that_cannot_be_written_is_an_output_error_naming_the_path(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    target = tmp_path / "file" / "a" / "out.json"
    with pytest.raises(OutputError, match=f"cannot write {target}: {tmp_path / 'file'} is not a directory") as err:
        atomic_write(target, "{}")
    assert err.value.errno == errno.ENOTDIR and isinstance(err.value, USER_ERRORS)
    with pytest.raises(OutputError, match="it is a directory"):
        check_writable(tmp_path / "dir")
    with pytest.raises(OutputError, match="it is a directory"):
        atomic_write(tmp_path / "dir", "{}")
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"] and not os.listdir(tmp_path / "dir")
    check_writable(tmp_path / "new" / "out.json")  # creates the directory, writes nothing
    assert os.listdir(tmp_path / "new") == []
