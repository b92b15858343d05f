"""What every checkpoint reader shares: the result type, the accepted formats, bfloat16 decoding."""
from typing import Dict

import numpy as np

__all__ = ["StateDict", "EXPECTED_FORMATS", "itemsize", "bf16_to_f32"]

StateDict = Dict[str, np.ndarray]

EXPECTED_FORMATS = (
    "PyTorch zip checkpoint (.pth/.pt/.bin from torch.save), .safetensors, "
    ".npz (timm or JAX/big_vision ViT naming) or MindSpore .ckpt"
)

_BYTES_PER_ELEMENT = {"bfloat16": 2}


def itemsize(dtype_name: str) -> int:
    return _BYTES_PER_ELEMENT.get(dtype_name) or np.dtype(dtype_name).itemsize


def bf16_to_f32(raw_u16: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact: bf16 is the top half of an fp32)."""
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)
