"""Checkpoint readers: every supported format into ``{timm name: numpy array}``, no torch needed.

* PyTorch zip checkpoints (``.pth``/``.pt``/``.bin``): :mod:`.torch_zip` (restricted unpickler);
* ``.safetensors``: :mod:`.safetensors`;
* ``.npz`` with timm names or the JAX/big_vision ViT layout: :mod:`.npz`;
* MindSpore ``.ckpt``: :mod:`.ckpt`.

:func:`read_state_dict` picks the reader from the file's first bytes, takes the state dict out of a
wrapper (``model``/``state_dict``/``model_ema``) and strips a ``module.`` prefix. A training checkpoint of
mindppt is read like any ``.ckpt``; :mod:`.train_state` knows its layout.
"""
import logging
import os
import zipfile
from typing import Mapping

import numpy as np

from mindppt.errors import CheckpointError

from .ckpt import read_mindspore_ckpt
from .common import EXPECTED_FORMATS, StateDict
from .npz import jax_vit_to_timm, read_npz
from .safetensors import looks_like_safetensors, read_safetensors
from .torch_zip import read_torch_zip, torch_zip_prefix

__all__ = ["read_state_dict", "read_torch_zip", "read_safetensors", "read_npz", "read_mindspore_ckpt",
           "jax_vit_to_timm", "StateDict", "EXPECTED_FORMATS"]

_logger = logging.getLogger(__name__)


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
                f"{path} is a truncated or corrupt zip archive (expected a {EXPECTED_FORMATS}): {e}"
            ) from e
        if torch_zip_prefix(names) is not None:
            return _clean_names(_select_state_dict(read_torch_zip(path), path), path)
        if names and all(n.endswith(".npy") for n in names):
            return _clean_names(read_npz(path), path)
        raise CheckpointError(f"{path} is a zip archive but neither a PyTorch checkpoint nor an .npz")
    if head[:1] == b"\x80" and ext in (".pth", ".pt", ".bin", ".tar") and not looks_like_safetensors(head, size):
        raise CheckpointError(
            f"{path} looks like a legacy (torch < 1.6, non-zip) PyTorch checkpoint, which is not supported; "
            f"re-save it with a recent torch.save (zip format)"
        )
    if looks_like_safetensors(head, size):
        return _clean_names(read_safetensors(path), path)
    if ext == ".safetensors":
        return _clean_names(read_safetensors(path), path)  # raises a precise error
    if ext == ".ckpt":
        return _clean_names(read_mindspore_ckpt(path), path)
    raise CheckpointError(f"{path} is not a recognised checkpoint: expected a {EXPECTED_FORMATS}")
