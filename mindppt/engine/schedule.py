"""Per-step learning-rate schedules (a list the optimizer indexes with its global step).

DeiT/timm step the cosine once per epoch; here it is evaluated per step (as mindcv does), which is
smoother and, at the end of each epoch, equal to timm's value to within one epoch's decay.
"""
import math

import numpy as np

__all__ = ["create_lr_schedule", "resolve_lr", "recipe_lr_values"]


def resolve_lr(args, device_num=1):
    """Peak learning rate: ``args.lr`` if set, else DeiT's linear scaling rule,
    ``lr_per_512 * batch_size * device_num / 512`` (the global batch)."""
    if getattr(args, "lr", None) is not None:
        return float(args.lr)
    return float(args.lr_per_512) * args.batch_size * int(device_num) / 512.0


def create_lr_schedule(*, base_lr, min_lr, warmup_factor, warmup_epochs, epochs, steps_per_epoch,
                       scheduler="cosine_decay", decay_epochs=None, lr_epoch_stair=False):
    """Learning rate for each training step, as a float32 numpy array of ``epochs * steps_per_epoch``
    (mindcv's scheduler options).

    Warmup: ``round(warmup_epochs * steps_per_epoch)`` steps rising linearly from ``base_lr *
    warmup_factor`` (at step 0) towards ``base_lr`` (reached at the first step after warmup). Then
    ``cosine_decay`` decays from ``base_lr`` to ``min_lr`` along half a cosine over ``decay_epochs`` (default:
    the remaining epochs, so the last step is just above ``min_lr``) and stays at ``min_lr`` after it;
    ``constant`` stays at ``base_lr``. ``lr_epoch_stair``: every step of an epoch takes the value of the
    epoch's first step.
    """
    epochs, steps_per_epoch = int(epochs), int(steps_per_epoch)
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    for name, value in (("base_lr", base_lr), ("min_lr", min_lr), ("warmup_factor", warmup_factor)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if scheduler not in ("cosine_decay", "constant"):
        raise ValueError(f"unknown scheduler {scheduler!r}; expected 'cosine_decay' or 'constant'")

    total = epochs * steps_per_epoch
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total)
    decay = total - warmup if decay_epochs is None else max(1, int(round(decay_epochs * steps_per_epoch)))
    if warmup + decay > total:
        raise ValueError(f"warmup_epochs + decay_epochs ({warmup_epochs} + {decay_epochs}) exceed epochs={epochs}")
    steps = np.arange(total, dtype=np.float64)
    lr = np.full(total, float(base_lr), dtype=np.float64)
    if warmup > 0:
        start = base_lr * warmup_factor
        lr[:warmup] = start + (base_lr - start) * steps[:warmup] / warmup
    if scheduler == "cosine_decay" and total > warmup:
        progress = np.minimum((steps[warmup:] - warmup) / decay, 1.0)
        lr[warmup:] = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + np.cos(math.pi * progress))
    if lr_epoch_stair:
        lr = np.repeat(lr[::steps_per_epoch], steps_per_epoch)
    return lr.astype(np.float32)


def recipe_lr_values(args, steps_per_epoch=1, device_num=1):
    """The per-step learning rates of the recipe ``args`` (:func:`create_lr_schedule` from its peak lr,
    :func:`resolve_lr` for ``device_num`` devices, and its warmup and schedule) at ``steps_per_epoch``."""
    return create_lr_schedule(base_lr=resolve_lr(args, device_num), min_lr=args.min_lr,
                              warmup_factor=args.warmup_factor, warmup_epochs=args.warmup_epochs,
                              epochs=args.epoch_size, steps_per_epoch=steps_per_epoch, scheduler=args.scheduler,
                              decay_epochs=args.decay_epochs, lr_epoch_stair=args.lr_epoch_stair)
