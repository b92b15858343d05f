"""Checkpoint reading, conversion to the model's names, loading, and atomic saving.

Readers (no torch import, no arbitrary code execution):

* PyTorch zip checkpoints (``.pth``/``.pt``/``.bin`` written by ``torch.save``, torch >= 1.6): the
  pickle is read with a restricted unpickler that only resolves the handful of globals a state dict
  needs; everything else is refused with :class:`CheckpointError`.
* ``.safetensors``: the format is parsed directly (header length, JSON header, raw buffers).
* ``.npz``: timm-named arrays, or the JAX/big_vision ViT layout (``Transformer/encoderblock_{i}/...``),
  which is renamed and transposed to timm's layout.
* MindSpore ``.ckpt`` via ``mindspore.load_checkpoint``.

Every reader returns ``dict[str, np.ndarray]`` with timm names (``module.`` prefix stripped).

Conversion (:func:`convert_state_dict`) maps those names onto the model's parameters and refuses
anything that does not fit, naming every missing, unexpected and wrongly-shaped parameter. Nothing is
resized. The only tolerated mismatch is a classifier head of a different size (another
``num_classes``): ``head.weight``/``head.bias`` are then dropped with a warning and the model keeps its
own freshly initialised head. Distilled DeiT checkpoints (``dist_token``, ``head_dist``) are refused:
they are a different architecture (two class tokens, 198 position embeddings), and dropping the extra
token would silently change what the remaining weights mean.

MindSpore is imported lazily so the readers can be used (and tested) without paying its import cost.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections import OrderedDict
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

__all__ = [
    "CheckpointError",
    "read_state_dict",
    "read_torch_zip",
    "read_safetensors",
    "read_npz",
    "read_mindspore_ckpt",
    "jax_vit_to_timm",
    "convert_state_dict",
    "load_state_dict_into_model",
    "load_model_weights",
    "save_checkpoint_atomic",
    "save_param_dict_as_ckpt",
    "model_param_shapes",
]

_logger = logging.getLogger(__name__)

StateDict = Dict[str, np.ndarray]

_EXPECTED_FORMATS = (
    "PyTorch zip checkpoint (.pth/.pt/.bin from torch.save), .safetensors, "
    ".npz (timm or JAX/big_vision ViT naming) or MindSpore .ckpt"
)


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not fit the model it is loaded into.

    For a mismatch, ``missing``, ``unexpected`` and ``mismatched`` hold the complete name lists (the
    message shows the first 20 of each).
    """

    def __init__(self, message, *, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


# ---------------------------------------------------------------------------------------------------
# PyTorch zip checkpoints, read without torch
# ---------------------------------------------------------------------------------------------------

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

_BYTES_PER_ELEMENT = {"bfloat16": 2}


def _itemsize(dtype_name: str) -> int:
    return _BYTES_PER_ELEMENT.get(dtype_name) or np.dtype(dtype_name).itemsize


def _bf16_to_f32(raw_u16: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact: bf16 is the top half of an fp32)."""
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


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
        nbytes = numel * _itemsize(dtype_name)
        if len(raw) < nbytes:
            raise pickle.UnpicklingError(f"storage {entry} holds {len(raw)} bytes, expected {nbytes}")
        order = ">" if self._big_endian else "<"
        if dtype_name == "bfloat16":
            data = _bf16_to_f32(np.frombuffer(raw, dtype=order + "u2", count=numel))
        else:
            native = np.dtype(dtype_name)
            data = np.frombuffer(raw, dtype=native.newbyteorder(order), count=numel)
            if data.dtype != native:  # big-endian file: convert once to native order
                data = data.astype(native)
        storage = _Storage(data, entry)
        self._storages[key] = storage
        return storage


def _torch_zip_prefix(names: Iterable[str]) -> Optional[str]:
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
            prefix = _torch_zip_prefix(archive.namelist())
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
            f"{path} is truncated or corrupt (expected a {_EXPECTED_FORMATS}): {type(e).__name__}: {e}"
        ) from e


# ---------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _looks_like_safetensors(head: bytes, file_size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= file_size - 8 and head[8:9] == b"{"


def read_safetensors(path: str) -> StateDict:
    """Parse a .safetensors file: u64 LE header size, JSON header, then the raw little-endian buffers."""
    path = str(path)
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise CheckpointError(f"{path} is too short to be a safetensors file ({len(blob)} bytes)")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > len(blob) - 8:
        raise CheckpointError(f"{path} is truncated: safetensors header of {header_len} bytes does not fit")
    try:
        header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: invalid safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: invalid safetensors header (not a JSON object)")
    buf = memoryview(blob)[8 + header_len:]
    out: StateDict = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_code, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: malformed safetensors entry for {name!r}: {info!r}") from e
        if dtype_code not in _SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name!r} has unsupported dtype {dtype_code} "
                f"(supported: {', '.join(_SAFETENSORS_DTYPES)})"
            )
        dtype_name = _SAFETENSORS_DTYPES[dtype_code]
        numel = int(np.prod(shape, dtype=np.int64))
        if not (0 <= begin <= end <= len(buf)) or end - begin != numel * _itemsize(dtype_name):
            raise CheckpointError(
                f"{path} is truncated or corrupt: tensor {name!r} {dtype_code}{shape} has data offsets "
                f"[{begin}, {end}) but the data section holds {len(buf)} bytes"
            )
        raw = buf[begin:end]
        if dtype_name == "bfloat16":
            arr = _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            dt = np.dtype(dtype_name)
            arr = np.frombuffer(raw, dtype=dt.newbyteorder("<") if dt.itemsize > 1 else dt).astype(dt)
        out[name] = arr.reshape(shape).copy()
    return out


# ---------------------------------------------------------------------------------------------------
# npz: timm names or JAX/big_vision ViT layout
# ---------------------------------------------------------------------------------------------------

def _is_jax_vit(keys: Iterable[str]) -> bool:
    return any(re.search(r"(^|/)Transformer/encoderblock_\d+/", k) for k in keys) or any(
        k.endswith("embedding/kernel") for k in keys
    )


def jax_vit_to_timm(weights: Mapping[str, np.ndarray]) -> StateDict:
    """Rename and transpose a JAX/big_vision ViT parameter dict to timm's VisionTransformer layout.

    Layout (Flax): Dense kernels are (in, out) -> timm (out, in); the patch conv kernel is
    (kh, kw, in, out) -> (out, in, kh, kw); attention q/k/v kernels are (C, heads, head_dim) and are
    concatenated into timm's fused qkv (3C, C); the attention output kernel is (heads, head_dim, C).
    Keys that are not understood are kept under their original names, so the model check reports them
    as unexpected rather than dropping them silently.
    """
    w = dict(weights)
    prefix = ""
    for p in ("opt/target/", "params/"):
        if f"{p}embedding/kernel" in w:
            prefix = p
    rest = {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}
    rest.update({k: v for k, v in w.items() if not k.startswith(prefix)})
    out: StateDict = {}
    used = set()

    def take(key):
        used.add(key)
        return np.asarray(rest[key])

    def maybe(key, name, fn=lambda a: a):
        if key in rest:
            out[name] = np.ascontiguousarray(fn(take(key)))

    maybe("embedding/kernel", "patch_embed.proj.weight", lambda a: a.transpose(3, 2, 0, 1))
    maybe("embedding/bias", "patch_embed.proj.bias")
    maybe("cls", "cls_token")
    maybe("Transformer/posembed_input/pos_embedding", "pos_embed")
    maybe("Transformer/encoder_norm/scale", "norm.weight")
    maybe("Transformer/encoder_norm/bias", "norm.bias")
    maybe("head/kernel", "head.weight", lambda a: a.T)
    maybe("head/bias", "head.bias")
    maybe("pre_logits/kernel", "pre_logits.fc.weight", lambda a: a.T)
    maybe("pre_logits/bias", "pre_logits.fc.bias")

    blocks = sorted({int(m.group(1)) for k in rest for m in [re.match(r"Transformer/encoderblock_(\d+)/", k)] if m})
    for i in blocks:
        bp = f"Transformer/encoderblock_{i}/"
        sub = {k[len(bp):] for k in rest if k.startswith(bp)}

        def index_of(kind):
            return sorted({int(m.group(1)) for s in sub for m in [re.match(kind + r"_(\d+)/", s)] if m})

        ln, mha, mlp = index_of("LayerNorm"), index_of("MultiHeadDotProductAttention"), index_of("MlpBlock")
        t = f"blocks.{i}."
        if len(ln) == 2:  # classic ViT: LayerNorm_0 / LayerNorm_2; big_vision: LayerNorm_0 / LayerNorm_1
            for j, norm in zip(ln, ("norm1", "norm2")):
                maybe(f"{bp}LayerNorm_{j}/scale", t + f"{norm}.weight")
                maybe(f"{bp}LayerNorm_{j}/bias", t + f"{norm}.bias")
        if len(mha) == 1:
            ap = f"{bp}MultiHeadDotProductAttention_{mha[0]}/"
            qkv = [ap + f"{n}/kernel" for n in ("query", "key", "value")]
            if all(k in rest for k in qkv):
                # (C, H, D) -> (C, H*D) -> (H*D, C), stacked q, k, v
                out[t + "attn.qkv.weight"] = np.concatenate(
                    [take(k).reshape(take(k).shape[0], -1).T for k in qkv], axis=0
                )
            qkv_b = [ap + f"{n}/bias" for n in ("query", "key", "value")]
            if all(k in rest for k in qkv_b):
                out[t + "attn.qkv.bias"] = np.concatenate([take(k).reshape(-1) for k in qkv_b], axis=0)
            # (H, D, C) -> (H*D, C) -> (C, H*D)
            maybe(ap + "out/kernel", t + "attn.proj.weight", lambda a: a.reshape(-1, a.shape[-1]).T)
            maybe(ap + "out/bias", t + "attn.proj.bias")
        if len(mlp) == 1:
            mp = f"{bp}MlpBlock_{mlp[0]}/"
            for j, fc in ((0, "fc1"), (1, "fc2")):
                maybe(f"{mp}Dense_{j}/kernel", t + f"mlp.{fc}.weight", lambda a: a.T)
                maybe(f"{mp}Dense_{j}/bias", t + f"mlp.{fc}.bias")

    for k, v in rest.items():
        if k not in used:
            out[k] = np.asarray(v)
    return out


def read_npz(path: str) -> StateDict:
    path = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt (expected an .npz archive): {e}") from e
    if _is_jax_vit(arrays):
        return jax_vit_to_timm(arrays)
    return arrays


# ---------------------------------------------------------------------------------------------------
# MindSpore .ckpt
# ---------------------------------------------------------------------------------------------------

def _ms_to_numpy(value) -> np.ndarray:
    import mindspore as ms

    try:
        return value.asnumpy()
    except (TypeError, RuntimeError):  # e.g. bfloat16 has no numpy dtype
        return value.astype(ms.float32).asnumpy()


def read_mindspore_ckpt(path: str) -> StateDict:
    import mindspore as ms

    path = str(path)
    try:
        params = ms.load_checkpoint(path)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError with long messages
        raise CheckpointError(
            f"{path} could not be read as a MindSpore .ckpt (expected a {_EXPECTED_FORMATS}): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    if not params:
        raise CheckpointError(f"{path} is an empty or unreadable MindSpore .ckpt")
    return {name: _ms_to_numpy(p) for name, p in params.items() if not isinstance(p, str)}


# ---------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------

def _select_state_dict(obj, path: str) -> Mapping:
    """Pick the state dict out of a loaded checkpoint object (top level or model/state_dict/model_ema)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    for key in ("model", "state_dict", "model_ema"):
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def _clean_names(sd: Mapping, path: str) -> StateDict:
    out: StateDict = {}
    skipped = []
    for name, value in sd.items():
        if not isinstance(value, np.ndarray):
            skipped.append(str(name))
            continue
        name = str(name)
        if name.startswith("module."):
            name = name[len("module."):]
        out[name] = value
    if skipped:
        _logger.info("%s: ignoring %d non-tensor entries: %s", path, len(skipped), skipped[:10])
    if not out:
        raise CheckpointError(f"{path} holds no tensors")
    return out


def read_state_dict(path) -> StateDict:
    """Read a checkpoint of any supported format into ``{timm_name: np.ndarray}``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    ext = os.path.splitext(path)[1].lower()

    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise CheckpointError(
                f"{path} is a truncated or corrupt zip archive (expected a {_EXPECTED_FORMATS}): {e}"
            ) from e
        if _torch_zip_prefix(names) is not None:
            return _clean_names(_select_state_dict(read_torch_zip(path), path), path)
        if names and all(n.endswith(".npy") for n in names):
            return _clean_names(read_npz(path), path)
        raise CheckpointError(f"{path} is a zip archive but neither a PyTorch checkpoint nor an .npz")
    if head[:1] == b"\x80" and ext in (".pth", ".pt", ".bin", ".tar") and not _looks_like_safetensors(head, size):
        raise CheckpointError(
            f"{path} looks like a legacy (torch < 1.6, non-zip) PyTorch checkpoint, which is not supported; "
            f"re-save it with a recent torch.save (zip format)"
        )
    if _looks_like_safetensors(head, size):
        return _clean_names(read_safetensors(path), path)
    if ext == ".safetensors":
        return _clean_names(read_safetensors(path), path)  # raises a precise error
    if ext == ".ckpt":
        return _clean_names(read_mindspore_ckpt(path), path)
    raise CheckpointError(f"{path} is not a recognised checkpoint: expected a {_EXPECTED_FORMATS}")


# ---------------------------------------------------------------------------------------------------
# Matching a state dict to a model
# ---------------------------------------------------------------------------------------------------

_DISTILLED_KEYS = ("dist_token", "head_dist.weight", "head_dist.bias")
_HEAD_KEYS = ("head.weight", "head.bias")


def model_param_shapes(model) -> "OrderedDict[str, tuple]":
    """``{parameter name: shape}`` of the model's weights in order (names as ``load_param_into_net``
    matches them). Run-time settings stored as parameters (the PPT threshold) are not weights: they
    keep the model's configured value and are never read from a checkpoint."""
    from mindppt.models.ppt import is_runtime_setting  # pylint: disable=import-outside-toplevel

    return OrderedDict((p.name, tuple(p.shape)) for _, p in model.parameters_and_names()
                       if not is_runtime_setting(p.name))


def _model_dtypes(model) -> Dict[str, np.dtype]:
    import mindspore as ms

    table = {ms.float32: np.float32, ms.float16: np.float16, ms.float64: np.float64, ms.int64: np.int64,
             ms.int32: np.int32, ms.int16: np.int16, ms.int8: np.int8, ms.uint8: np.uint8, ms.bool_: np.bool_}
    # anything else (bfloat16) is handed over as float32 and cast by MindSpore
    return {p.name: np.dtype(table.get(p.dtype, np.float32)) for _, p in model.parameters_and_names()}


def _aliases(name: str):
    """Alternative model names for a timm name (MindSpore LayerNorm calls its affine gamma/beta)."""
    yield name
    if name.endswith(".weight"):
        yield name[: -len(".weight")] + ".gamma"
    elif name.endswith(".bias"):
        yield name[: -len(".bias")] + ".beta"


def _fmt_names(names, limit=20):
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ... (%d more)' % (len(names) - limit) if len(names) > limit else ''}]"


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model, *, strict: bool = True,
                       source: str = "checkpoint", model_name: Optional[str] = None) -> StateDict:
    """Map a timm/DeiT-named state dict onto ``model``'s parameter names and check it fits.

    Returns ``{model_param_name: array}`` cast to each parameter's dtype. Raises :class:`CheckpointError`
    listing every missing, unexpected and wrongly-shaped parameter. With ``strict=False`` missing and
    unexpected names are only warned about; shape mismatches are always errors (nothing is resized).
    A head of a different shape alone (other ``num_classes``) is dropped with a warning.
    """
    from mindppt.models.ppt import is_runtime_setting  # pylint: disable=import-outside-toplevel

    model_name = model_name or type(model).__name__
    shapes = model_param_shapes(model)
    dtypes = _model_dtypes(model)

    distilled = [k for k in _DISTILLED_KEYS if k in state_dict]
    if distilled and not any(k in shapes for k in distilled):
        raise CheckpointError(
            f"checkpoint {source} is a distilled DeiT (has {', '.join(distilled)}); distilled models use a "
            f"second (distillation) token and are a different architecture from {model_name}. Use the "
            f"non-distilled DeiT weights."
        )

    mapped: StateDict = {}
    unexpected = []
    for name, arr in state_dict.items():
        if is_runtime_setting(name):  # saved by our own trainer; the model's configured value wins
            continue
        target = next((a for a in _aliases(name) if a in shapes), None)
        if target is None:
            unexpected.append(name)
        elif target in mapped:
            raise CheckpointError(f"checkpoint {source} maps two tensors onto {target}")
        else:
            mapped[target] = np.asarray(arr)
    missing = [n for n in shapes if n not in mapped]
    mismatched = [n for n, a in mapped.items() if tuple(a.shape) != shapes[n]]

    head_only = mismatched and all(n in _HEAD_KEYS or n.startswith("head.") for n in mismatched)
    if head_only:
        desc = ", ".join(f"{n} {tuple(mapped[n].shape)} vs model {shapes[n]}" for n in mismatched)
        msg = (f"checkpoint {source}: classifier head has a different shape ({desc}), i.e. another "
               f"num_classes; dropping it and keeping {model_name}'s freshly initialised head")
        warnings.warn(msg, stacklevel=2)
        for n in mismatched:
            del mapped[n]
        mismatched = []
    # a dropped head is not reported as missing: the model keeps its own
    problems = []
    if missing and strict:
        problems.append(f"missing {_fmt_names(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected {_fmt_names(unexpected)}")
    if mismatched:
        problems.append("shape mismatch " + _fmt_names(
            [f"{n}: file {tuple(mapped[n].shape)} vs model {shapes[n]}" for n in mismatched]))
    if problems:
        hint = ""
        if "cls_token" in mismatched:
            hint = (f" (the checkpoint's embed dim is {mapped['cls_token'].shape[-1]}, "
                    f"the model's {shapes['cls_token'][-1]})")
        raise CheckpointError(
            f"checkpoint {source} does not match model {model_name}: " + ", ".join(problems) + hint,
            missing=missing if strict else (), unexpected=unexpected if strict else (),
            mismatched=mismatched)
    if not strict and (missing or unexpected):
        msg = (f"checkpoint {source} loaded non-strictly into {model_name}: "
               f"missing {_fmt_names(missing)}, unexpected {_fmt_names(unexpected)}")
        warnings.warn(msg, stacklevel=2)

    return OrderedDict(
        (n, np.ascontiguousarray(mapped[n].astype(dtypes[n], copy=False))) for n in shapes if n in mapped
    )


def load_state_dict_into_model(model, state_dict: Mapping[str, np.ndarray], *, strict: bool = True,
                               source: str = "checkpoint", model_name: Optional[str] = None) -> Dict[str, list]:
    """Convert an already-read state dict (see :func:`convert_state_dict`) and load it into ``model``.

    Returns ``{"loaded": [...], "not_loaded": [...]}`` (``not_loaded`` is non-empty only for a dropped
    head or with ``strict=False``).
    """
    import mindspore as ms

    params = convert_state_dict(state_dict, model, strict=strict, source=source, model_name=model_name)
    param_dict = {n: ms.Parameter(ms.Tensor(a), name=n) for n, a in params.items()}
    from mindppt.models.ppt import is_runtime_setting  # pylint: disable=import-outside-toplevel
    for _, param in model.parameters_and_names():  # run-time settings keep their configured value
        if is_runtime_setting(param.name):
            param_dict[param.name] = ms.Parameter(param.value().copy(), name=param.name, requires_grad=False)
    not_loaded, ckpt_not_loaded = ms.load_param_into_net(model, param_dict, strict_load=True)
    if ckpt_not_loaded:
        raise CheckpointError(f"checkpoint {source}: MindSpore did not load {_fmt_names(ckpt_not_loaded)}")
    return {"loaded": list(params), "not_loaded": list(not_loaded)}


def load_model_weights(model, path, strict: bool = True, model_name: Optional[str] = None) -> Dict[str, list]:
    """Read ``path`` (any supported format), convert, check and load it into ``model`` in place.

    This is what ``create_model(..., checkpoint_path=path)`` calls. Raises :class:`CheckpointError`
    for unreadable files and for checkpoints that do not fit the model.
    """
    path = os.fspath(path)
    return load_state_dict_into_model(model, read_state_dict(path), strict=strict, source=path,
                                      model_name=model_name)


# ---------------------------------------------------------------------------------------------------
# Atomic saving
# ---------------------------------------------------------------------------------------------------

def _fsync_dir(directory: str) -> None:
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


def save_checkpoint_atomic(obj_or_param_list, path, append_dict: Optional[dict] = None) -> str:
    """``mindspore.save_checkpoint`` to a temporary file next to ``path``, fsync, then ``os.replace``.

    An interrupted or failed save (e.g. disk full) leaves any existing ``path`` untouched; the
    temporary file is removed and the error re-raised naming ``path``. ``path`` is used exactly as
    given (MindSpore would append ``.ckpt`` to other names; we do not). Returns ``path``.
    """
    import mindspore as ms

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # The temp name must end in .ckpt, or MindSpore appends it; MindSpore itself writes "<stem>.tmp"
    # first and renames, so clean that up too on failure.
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial.ckpt", dir=directory)
    os.close(fd)
    ms_tmp = tmp[: -len(".ckpt")] + ".tmp"
    try:
        ms.save_checkpoint(obj_or_param_list, tmp, append_dict=append_dict, async_save=False)
        if not os.path.isfile(tmp):
            raise OSError(f"mindspore.save_checkpoint did not produce {tmp}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException as e:
        for leftover in (tmp, ms_tmp):
            try:
                os.chmod(leftover, 0o600)
                os.remove(leftover)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise OSError(e.errno, f"could not save checkpoint {path}: {e.strerror or e}") from e
        if isinstance(e, Exception):
            raise RuntimeError(f"could not save checkpoint {path}: {type(e).__name__}: {e}") from e
        raise
    return path


def save_param_dict_as_ckpt(param_dict: Mapping[str, np.ndarray], path) -> str:
    """Write ``{name: array}`` as a MindSpore .ckpt (atomically); returns ``path``."""
    import mindspore as ms

    param_list = [{"name": n, "data": ms.Tensor(np.ascontiguousarray(a))} for n, a in param_dict.items()]
    return save_checkpoint_atomic(param_list, path)
