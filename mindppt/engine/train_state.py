"""Training checkpoints: everything a resumed run needs, in one MindSpore ``.ckpt`` written atomically.

A training checkpoint is ``mindspore.save_checkpoint`` of the whole training step cell, so it holds the
model weights (timm names), the optimizer state (``adam_m.*``, ``adam_v.*``, ``global_step`` -- the
position in the per-step LR schedule), the loss scale (``scale_sense`` and the dynamic scaler's
counters) and, with EMA, ``ema.*``; plus these scalars (``append_dict``, stored under ``meta_<key>``):

    mindppt_train_state  format version (1)
    model                registered model name (str)
    epoch                completed epochs
    step_in_epoch        steps done in the next epoch (non-zero only for a checkpoint written on SIGINT/SIGTERM)
    global_step          optimizer steps done in total (equal to the optimizer's own ``global_step``)
    steps_per_epoch      steps per epoch on each device when it was written
    epoch_size           planned number of epochs
    best_top1, best_epoch  best validation top-1 so far (-1 if none)

Files are written to a temporary name, fsynced and renamed (``save_checkpoint_atomic``), so a crash or a
full disk while saving leaves the previous file intact.
"""
import os

import numpy as np
import mindspore as ms

from mindppt.utils.checkpoint import CheckpointError, save_checkpoint_atomic
from .ema import EMA_PREFIX

__all__ = ["FORMAT_KEY", "META_KEYS", "save_train_state", "load_train_state", "restore_train_state",
           "is_train_state", "model_weights_from_state", "link_or_copy"]

FORMAT_KEY = "mindppt_train_state"
FORMAT_VERSION = 1
META_KEYS = ("epoch", "step_in_epoch", "global_step", "steps_per_epoch", "epoch_size", "best_top1",
             "best_epoch")
META_PREFIX = "meta_"
_NOT_PARAMS = (FORMAT_KEY,) + tuple(META_PREFIX + k for k in ("model",) + META_KEYS)


def save_train_state(train_step, path, *, model_name, meta):
    """Write ``train_step``'s parameters and ``meta`` (the scalars above) to ``path`` atomically."""
    append = {FORMAT_KEY: FORMAT_VERSION, META_PREFIX + "model": str(model_name)}
    for key in META_KEYS:
        value = meta[key]
        # best_top1 as a float64 tensor: a float would be stored as float32, and the rounded value
        # would make a resumed run see a tie as an improvement
        append[META_PREFIX + key] = (ms.Tensor(np.array(value, dtype=np.float64)) if key == "best_top1"
                                     else int(value))
    return save_checkpoint_atomic(train_step, path, append_dict=append)


def _scalar(value):
    if hasattr(value, "asnumpy"):
        value = value.asnumpy()
    return np.asarray(value).reshape(-1)[0].item()


def load_train_state(path):
    """Read a training checkpoint: ``(param_dict of Parameters, meta dict incl. 'model')``.

    Raises CheckpointError if the file is missing, unreadable or not a mindppt training checkpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"resume checkpoint {path} does not exist or is not a file")
    try:
        params = ms.load_checkpoint(path)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError with long messages
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"resume checkpoint {path} could not be read (truncated or not a MindSpore "
                              f".ckpt?): {first}") from None
    if FORMAT_KEY not in params:
        raise CheckpointError(f"{path} is not a mindppt training checkpoint (no optimizer state or epoch): "
                              f"--resume needs a last.ckpt/best.ckpt/epoch_*.ckpt written by tools/train.py; "
                              f"to start from plain weights use --checkpoint_path")
    meta = {"model": params.pop(META_PREFIX + "model", None)}
    params.pop(FORMAT_KEY)
    for key in META_KEYS:
        if META_PREFIX + key not in params:
            raise CheckpointError(f"{path}: training checkpoint lacks {META_PREFIX + key!r}")
        meta[key] = _scalar(params.pop(META_PREFIX + key))
    return params, meta


def _is_runtime_setting(name):
    """Run-time settings stored as Parameters (the PPT threshold): the config wins, not the checkpoint."""
    return name.rsplit(".", 1)[-1] == "ppt_threshold"


def restore_train_state(train_step, params, *, source, ema_enabled):
    """Load ``params`` into ``train_step``. Every parameter of the step must be present, except the EMA
    averages when the checkpoint was written without EMA (they then start from the restored weights)
    and run-time settings (the PPT threshold keeps this run's configured value).
    Returns a list of notes (for the log)."""
    notes = []
    for name in [n for n in params if _is_runtime_setting(n)]:
        params.pop(name)
    expected = {p.name for p in train_step.get_parameters() if not _is_runtime_setting(p.name)}
    missing = sorted(expected - set(params))
    if ema_enabled and missing and all(n.startswith(EMA_PREFIX) for n in missing):
        for name in missing:
            params[name] = ms.Parameter(ms.Tensor(params[name[len(EMA_PREFIX):]].asnumpy()), name=name)
        notes.append(f"{source} has no EMA weights: the EMA starts from its weights")
        missing = []
    unexpected = sorted(set(params) - expected)
    if not ema_enabled and unexpected and all(n.startswith(EMA_PREFIX) for n in unexpected):
        for name in unexpected:
            params.pop(name)
        notes.append(f"{source} has EMA weights but ema is off: they are ignored")
        unexpected = []
    if missing or unexpected:
        raise CheckpointError(
            f"resume checkpoint {source} does not match this training setup: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''} (other model, optimizer or loss scaling?)")
    shapes = {p.name: tuple(p.shape) for p in train_step.get_parameters() if p.name in expected}
    wrong = [f"{n}: file {tuple(params[n].shape)} vs run {shapes[n]}" for n in shapes
             if tuple(params[n].shape) != shapes[n]]
    if wrong:
        raise CheckpointError(f"resume checkpoint {source} has parameters of other shapes: {wrong[:5]}")
    for p in train_step.get_parameters():  # run-time settings keep this run's value
        if _is_runtime_setting(p.name):
            params[p.name] = ms.Parameter(ms.Tensor(p.asnumpy()), name=p.name)
    not_loaded, _ = ms.load_param_into_net(train_step, params, strict_load=True)
    not_loaded = [n for n in not_loaded if n in expected]
    if not_loaded:
        raise CheckpointError(f"resume checkpoint {source}: MindSpore did not load {not_loaded[:10]}")
    return notes


def is_train_state(state_dict):
    """Whether a ``{name: array}`` dict (``read_state_dict``) came from a training checkpoint."""
    return FORMAT_KEY in state_dict


def model_weights_from_state(state_dict, use_ema=False):
    """The model's weights (``{timm name: array}``) out of a training checkpoint's state dict; with
    ``use_ema`` the EMA averages (an error if there are none)."""
    if use_ema:
        weights = {k[len(EMA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(EMA_PREFIX)}
        if not weights:
            raise CheckpointError("the checkpoint holds no EMA weights (trained with ema: false)")
        return weights
    skip_prefixes = ("adam_m.", "adam_v.", "moments.", "accum.", EMA_PREFIX)
    skip = set(_NOT_PARAMS) | {"global_step", "scale_sense", "current_iterator_step",
                               "last_overflow_iterator_step", "learning_rate"}
    return {k: v for k, v in state_dict.items() if k not in skip and not k.startswith(skip_prefixes)}


def link_or_copy(src, dst):
    """Make ``dst`` a snapshot of ``src``: a hard link (atomic rename into place), else a copy."""
    import shutil
    import tempfile

    directory = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".partial", dir=directory)
    os.close(fd)
    os.remove(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dst
