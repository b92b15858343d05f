"""PyTorch zip checkpoints (``torch.save``, torch >= 1.6) read without torch and without running code.

The archive's ``data.pkl`` is unpickled with a restricted unpickler that resolves only the handful of
globals a state dict needs (tensor rebuilding, ``OrderedDict``, ``torch.Size``, storage types and
``argparse.Namespace``) to stand-ins of our own; any other global is refused with CheckpointError
before anything runs. Tensors come back as numpy arrays (bfloat16 as float32).
"""
import io
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from typing import Dict, Iterable, Optional

import numpy as np

from mindppt.errors import CheckpointError

from .common import EXPECTED_FORMATS, bf16_to_f32, itemsize

__all__ = ["read_torch_zip", "torch_zip_prefix"]


# storage class name -> numpy dtype of its raw little-endian data ("bfloat16" is converted to float32)
_TORCH_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _StorageType:
    """Stand-in for ``torch.<X>Storage`` classes: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype_name = _TORCH_STORAGE_DTYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """A flat array of one storage's elements (already converted to a numpy dtype)."""

    def __init__(self, data: np.ndarray, key: str):
        self.data = data
        self.key = key


class _TorchSize(tuple):
    """Stand-in for ``torch.Size`` (a tuple)."""


class _Namespace:
    """Stand-in for ``argparse.Namespace`` (official DeiT checkpoints may store the training args)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __repr__(self):
        return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """Our ``torch._utils._rebuild_tensor(_v2)``: a strided view of a storage, copied to an array."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise pickle.UnpicklingError(f"invalid tensor geometry size={size} stride={stride} offset={offset}")
    flat = storage.data
    if 0 in size:
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= flat.size:
        # as_strided would read past the buffer: refuse instead of reading foreign memory
        raise pickle.UnpicklingError(
            f"tensor (size {size}, stride {stride}, offset {offset}) overruns storage {storage.key} "
            f"of {flat.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(st * flat.itemsize for st in stride), writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


def _rebuild_parameter_with_state(data, requires_grad=None, backward_hooks=None, state=None, *unused):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "Size"): _TorchSize,
    ("argparse", "Namespace"): _Namespace,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name) for name in _TORCH_STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for a torch ``data.pkl`` that resolves only state-dict globals to our own stand-ins."""

    def __init__(self, fileobj, *, archive: zipfile.ZipFile, prefix: str, big_endian: bool, path: str):
        super().__init__(fileobj)
        self._archive = archive
        self._prefix = prefix
        self._big_endian = big_endian
        self._path = path
        self._storages: Dict[str, _Storage] = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to load {module}.{name} from {self._path}: only tensors, dicts, "
                f"lists and plain values are allowed in a checkpoint (the pickle asks for a global "
                f"that could run code)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if key in self._storages:
            return self._storages[key]
        entry = f"{self._prefix}/data/{key}"
        try:
            raw = self._archive.read(entry)
        except KeyError:
            raise pickle.UnpicklingError(f"storage {entry} is missing from the archive") from None
        dtype_name = storage_type.dtype_name
        nbytes = numel * itemsize(dtype_name)
        if len(raw) < nbytes:
            raise pickle.UnpicklingError(f"storage {entry} holds {len(raw)} bytes, expected {nbytes}")
        order = ">" if self._big_endian else "<"
        if dtype_name == "bfloat16":
            data = bf16_to_f32(np.frombuffer(raw, dtype=order + "u2", count=numel))
        else:
            native = np.dtype(dtype_name)
            data = np.frombuffer(raw, dtype=native.newbyteorder(order), count=numel)
            if data.dtype != native:  # big-endian file: convert once to native order
                data = data.astype(native)
        storage = _Storage(data, entry)
        self._storages[key] = storage
        return storage


def torch_zip_prefix(names: Iterable[str]) -> Optional[str]:
    for name in names:
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "data.pkl":
            return parts[0]
    return None


def read_torch_zip(path: str) -> object:
    """Unpickle a torch.save zip archive into plain Python objects with numpy arrays for tensors."""
    path = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = torch_zip_prefix(archive.namelist())
            if prefix is None:
                raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint (no */data.pkl)")
            big_endian = False
            if f"{prefix}/byteorder" in archive.namelist():
                big_endian = archive.read(f"{prefix}/byteorder").strip() == b"big"
            pkl = archive.read(f"{prefix}/data.pkl")
            unpickler = _RestrictedUnpickler(
                io.BytesIO(pkl), archive=archive, prefix=prefix, big_endian=big_endian, path=path
            )
            return unpickler.load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, pickle.UnpicklingError, struct.error,
            zlib.error, ValueError, TypeError, IndexError, AttributeError, KeyError) as e:
        raise CheckpointError(
            f"{path} is truncated or corrupt (expected a {EXPECTED_FORMATS}): {type(e).__name__}: {e}"
        ) from e
