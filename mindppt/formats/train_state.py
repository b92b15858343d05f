"""The layout of a mindppt training checkpoint (``last.ckpt``, ``best.ckpt``, ``epoch_NNNN.ckpt``).

It is ``mindspore.save_checkpoint`` of the whole training step cell: the model weights (timm names), the
optimizer state (``adam_m.*``, ``adam_v.*``, ``global_step``: the position in the per-step LR schedule),
the loss scale (``scale_sense`` and the dynamic scaler's counters), with EMA the averages (``ema.*``),
and these scalars, stored under ``meta_<key>``:

    mindppt_train_state  format version (1)
    model                registered model name (str)
    epoch                completed epochs
    step_in_epoch        steps done in the next epoch (non-zero only for a checkpoint written on SIGINT/SIGTERM)
    global_step          optimizer steps done in total (equal to the optimizer's own ``global_step``)
    steps_per_epoch      steps per epoch on each device when it was written
    epoch_size           planned number of epochs
    best_top1, best_epoch  best validation top-1 so far (-1 if none)

The engine writes and resumes these files; the weight loader (:mod:`mindppt.models.weights`) takes the
model's weights, or the EMA averages, out of them.
"""
from mindppt.errors import CheckpointError

__all__ = ["FORMAT_KEY", "FORMAT_VERSION", "META_KEYS", "META_PREFIX", "EMA_PREFIX", "is_train_state",
           "model_weights_from_state"]

FORMAT_KEY = "mindppt_train_state"
FORMAT_VERSION = 1
META_KEYS = ("epoch", "step_in_epoch", "global_step", "steps_per_epoch", "epoch_size", "best_top1",
             "best_epoch")
META_PREFIX = "meta_"
EMA_PREFIX = "ema."
_NOT_WEIGHTS = {FORMAT_KEY, "global_step", "scale_sense", "current_iterator_step", "last_overflow_iterator_step",
                "learning_rate"} | {META_PREFIX + k for k in ("model",) + META_KEYS}
_OPTIMIZER_PREFIXES = ("adam_m.", "adam_v.", "moments.", "accum.")


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
    return {k: v for k, v in state_dict.items()
            if k not in _NOT_WEIGHTS and not k.startswith(_OPTIMIZER_PREFIXES + (EMA_PREFIX,))}
