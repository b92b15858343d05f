"""Atomic file output: a reader (or a crash, a kill -9, a full disk) sees the previous file or the
complete new one, never a part. Every file mindppt writes goes through :func:`atomic_output`."""
import contextlib
import os
import shutil
import tempfile

import mindspore as ms

from mindppt.errors import OutputError

__all__ = ["atomic_output", "atomic_write", "check_writable", "save_checkpoint_atomic", "link_or_copy",
           "PARTIAL_MARK"]

# Temporary names are hidden, next to the target: ".<name>.<random>.partial<suffix>".
PARTIAL_MARK = ".partial"


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path):
    try:
        os.chmod(path, 0o600)
        os.remove(path)
    except OSError:
        pass


def _first_existing(path):
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _output_dir(path):
    """The directory of ``path``, created with its parents if missing; OutputError if it cannot be, or if
    ``path`` itself is a directory."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        blocker = _first_existing(directory)
        why = (f"{blocker} is not a directory" if not os.path.isdir(blocker)
               else f"cannot create directory {err.filename or directory}: {err.strerror or err}")
        raise OutputError(f"cannot write {path}: {why}", err.errno) from None
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is a directory")
    return directory


def _temporary_name(path, directory, suffix):
    """A fresh hidden name next to ``path`` (the file is created to reserve it, then removed)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=PARTIAL_MARK + suffix, dir=directory)
    except OSError as err:
        raise OutputError(f"cannot write {path}: cannot create a file in {directory}: {err.strerror or err}",
                          err.errno) from None
    os.close(fd)
    os.remove(tmp)
    return tmp


def check_writable(path):
    """Raise OutputError (naming ``path`` and why) unless a file can be written at ``path``; its missing
    directories are created. A command writing several files checks them all first, so that a bad path
    fails before anything is written."""
    path = os.fspath(path)
    _temporary_name(path, _output_dir(path), "")


@contextlib.contextmanager
def atomic_output(path, suffix=""):
    """Yield a temporary path (not yet created) next to ``path``; when the block succeeds the file is
    fsynced and renamed onto ``path``, when it fails it is removed and the error propagates. OutputError
    (before the block runs) when ``path``'s directory cannot be created or written to."""
    path = os.fspath(path)
    directory = _output_dir(path)
    tmp = _temporary_name(path, directory, suffix)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise OSError(f"nothing was written to {tmp}")
        if os.path.isfile(tmp):
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _remove(tmp)
        raise


def atomic_write(path, data):
    """Write ``data`` (str as UTF-8, or bytes) to ``path`` atomically; returns ``path``."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def save_checkpoint_atomic(obj_or_param_list, path, append_dict=None):
    """``mindspore.save_checkpoint`` to ``path`` atomically. ``path`` is used exactly as given (MindSpore
    would append ``.ckpt`` to other names). A failed save (e.g. disk full) leaves any existing ``path``
    untouched and raises OSError (OutputError when ``path`` cannot be written there at all; RuntimeError for
    other failures) naming ``path``."""
    path = os.fspath(path)
    try:
        # The temporary name ends in .ckpt, or MindSpore appends it; MindSpore itself first writes
        # "<stem>.tmp" and renames it, so that is removed too when the save fails.
        with atomic_output(path, suffix=".ckpt") as tmp:
            try:
                ms.save_checkpoint(obj_or_param_list, tmp, append_dict=append_dict, async_save=False)
            except BaseException:
                _remove(tmp[: -len(".ckpt")] + ".tmp")
                raise
    except OutputError:
        raise  # the destination itself cannot be written: already names the path and why
    except OSError as err:
        raise OSError(err.errno, f"could not save checkpoint {path}: {err.strerror or err}") from err
    except Exception as err:
        raise RuntimeError(f"could not save checkpoint {path}: {type(err).__name__}: {err}") from err
    return path


def link_or_copy(src, dst):
    """Make ``dst`` a snapshot of ``src``: a hard link (renamed into place), else a copy."""
    with atomic_output(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst
