"""MindSpore ``.ckpt`` files, through ``mindspore.load_checkpoint``."""
import mindspore as ms
import numpy as np

from mindppt.errors import CheckpointError

from .common import EXPECTED_FORMATS, StateDict

__all__ = ["read_mindspore_ckpt"]


def _ms_to_numpy(value) -> np.ndarray:
    # bfloat16 has no plain numpy dtype: hand it over as float32, as the other readers do (exact)
    if value.dtype == ms.bfloat16:
        return value.astype(ms.float32).asnumpy()
    return value.asnumpy()


def read_mindspore_ckpt(path: str) -> StateDict:
    path = str(path)
    try:
        params = ms.load_checkpoint(path)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError with long messages
        raise CheckpointError(
            f"{path} could not be read as a MindSpore .ckpt (expected a {EXPECTED_FORMATS}): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    if not params:
        raise CheckpointError(f"{path} is an empty or unreadable MindSpore .ckpt")
    return {name: _ms_to_numpy(p) for name, p in params.items() if not isinstance(p, str)}
