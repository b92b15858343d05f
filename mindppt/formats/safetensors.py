"""``.safetensors`` parsed directly: little-endian u64 header size, JSON header, raw buffers."""
import json
import struct

import numpy as np

from mindppt.errors import CheckpointError

from .common import StateDict, bf16_to_f32, itemsize

__all__ = ["read_safetensors", "looks_like_safetensors"]


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


def looks_like_safetensors(head: bytes, file_size: int) -> bool:
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
        if not (0 <= begin <= end <= len(buf)) or end - begin != numel * itemsize(dtype_name):
            raise CheckpointError(
                f"{path} is truncated or corrupt: tensor {name!r} {dtype_code}{shape} has data offsets "
                f"[{begin}, {end}) but the data section holds {len(buf)} bytes"
            )
        raw = buf[begin:end]
        if dtype_name == "bfloat16":
            arr = bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            dt = np.dtype(dtype_name)
            arr = np.frombuffer(raw, dtype=dt.newbyteorder("<") if dt.itemsize > 1 else dt).astype(dt)
        out[name] = arr.reshape(shape).copy()
    return out
