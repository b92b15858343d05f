"""Training: ``train(args)`` runs a whole recipe (``args`` from :func:`mindppt.utils.config.parse_args`).

Built on MindSpore's own pieces: ``mindspore.dataset`` loaders (:func:`mindppt.data.create_loader`), an
``nn.Optimizer`` indexing a per-step LR table with its ``global_step`` (:mod:`.optim`, :mod:`.schedule`),
the jitted :class:`~.train_step.TrainStep` (gradients, data-parallel mean, loss scaling, clipping, EMA),
``mindspore.amp`` for ``amp_level``, and ``mindspore.train.Model.train`` with the callbacks of
:mod:`.callbacks` (progress, faults, validation, checkpoints).

Data parallel (``distribute: true`` under ``msrun``): ``mindspore.communication.init()``, DATA_PARALLEL
with ``gradients_mean=True``, the training and validation sets sharded by rank, the same seed on every
rank (identical initial weights), validation sums reduced over ranks, and only rank 0 writes the log,
the merged config and the checkpoints.

Resuming (``--resume last.ckpt``) restores weights, optimizer moments and step (so the LR position), loss
scale, EMA, best top-1 and the epoch/step counters, and restarts the data pipeline at that step with
``Dataset.set_init_step``: MindSpore's samplers are seeded by the seed and the epoch, so the remaining
batches are the same images in the same order as in an uninterrupted run. What is not replayed: the
random draws of augmentations (crop, RandAugment, erasing, mixup) and of dropout / drop path, whose
generators are not part of a checkpoint; a resumed run with those is statistically, not bitwise,
the same as an uninterrupted one. Without them (as in the tests) it ends with the same weights.
"""
import math
import os
import time
import warnings

import numpy as np
import mindspore as ms
from mindspore.train import Model

from mindppt.data import create_loader
from mindppt.models import create_model
from mindppt.utils.checkpoint import CheckpointError
from mindppt.utils.config import ConfigError, model_kwargs, resolve_lr, save_config
from mindppt.utils.device import setup_device
from mindppt.utils.flops import model_gmacs
from mindppt.utils.logging import get_logger
from .callbacks import Checkpointer, EpochEnd, RunState, TrainMonitor
from .ema import EMA
from .evaluate import evaluate
from .optim import create_optimizer
from .schedule import create_lr_schedule
from .train_state import load_train_state, restore_train_state
from .train_step import NetWithLoss, SoftTargetCrossEntropy, TrainStep

__all__ = ["train", "TrainingError", "TrainingInterrupted", "build_model", "apply_amp", "init_distributed",
           "make_reduce_sum", "copy_weights", "DUMP_WEIGHTS_ENV"]

# Test hook: when set, every rank writes its final model weights to <dir>/rank_<rank>.npz.
DUMP_WEIGHTS_ENV = "MINDPPT_DUMP_FINAL_WEIGHTS"


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss became NaN/inf); the message names the step and the
    last good checkpoint."""

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a resumable checkpoint was written."""

    def __init__(self, message, signum, checkpoint):
        super().__init__(message)
        self.signum, self.checkpoint = signum, checkpoint


def init_distributed(args):
    """``(rank, group_size)``; with ``args.distribute`` initialise communication and DATA_PARALLEL."""
    if not args.distribute:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()
    except Exception as e:  # RuntimeError with a long message when not started by msrun/mpirun
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"distribute=true but communication could not be initialised ({first}); launch with "
                          f"msrun --worker_num=N --local_worker_num=N tools/train.py ... --distribute true, "
                          f"or set --distribute false") from None
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=size)
    return rank, size


def make_reduce_sum(group_size):
    """A function summing a small numpy vector over all ranks (None on one device)."""
    if group_size <= 1:
        return None
    from mindspore.ops.communication import all_reduce

    def reduce_sum(vector):
        tensor = ms.Tensor(np.asarray(vector, dtype=np.float32))
        out = all_reduce(tensor)
        if isinstance(out, tuple):
            out = out[0]
        elif not isinstance(out, ms.Tensor):  # in-place variant returns a handle
            out = tensor
        return out.asnumpy().astype(np.float64)

    return reduce_sum


def build_model(args, for_eval=False, with_weights=True):
    """``create_model`` from the config; invalid model settings become ConfigError."""
    kwargs = model_kwargs(args, for_eval=for_eval)
    # Loaded after building, so a training checkpoint (weights + optimizer state) works here too.
    weights = kwargs.pop("checkpoint_path", "")
    if not with_weights:
        weights = ""
    if for_eval:
        kwargs["drop_path_rate"] = 0.0
        kwargs["drop_rate"] = 0.0
    try:
        model = create_model(args.model, **kwargs)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build model {args.model!r}: {e}") from None
    if weights:
        from .evaluate import load_eval_weights  # pylint: disable=import-outside-toplevel
        load_eval_weights(model, weights, model_name=args.model)
    warn_clamped_r_tokens(model, args.r_tokens)
    return model


def r_clamps(model):
    """``[(block, asked, removed, tokens_in)]`` for each block that removes fewer tokens than asked: a
    compression removes at most half of its non-class tokens, ``(N - 1) // 2`` (PPT's and ToMe's rule)."""
    asked, schedule = getattr(model, "r_per_block", None), getattr(model, "token_schedule", None)
    if not asked or not schedule:
        return []
    return [(i, r, n_in - n_out, n_in) for i, (r, (n_in, n_out)) in enumerate(zip(asked, schedule))
            if n_in - n_out < r]


def describe_r_clamps(clamps):
    """``r clamped to 48 at block 9 (97 tokens in)`` or an empty string."""
    if not clamps:
        return ""
    return "r clamped to " + ", ".join(f"{removed} at block {i} ({n_in} tokens in)" for i, _, removed, n_in in clamps)


def warn_clamped_r_tokens(model, r_tokens):
    """Warn (UserWarning) when a block was asked to remove at least as many tokens as it has non-class
    tokens: that is a setting PPT cannot mean, not its halving rule (e.g. r=50 at blocks 3/6/9 of DeiT
    becomes 48 at block 9, as in the paper, and is only reported with the token schedule). Returns the
    message, or None."""
    clamps = r_clamps(model)
    if not any(asked >= n_in - 1 for _, asked, _, n_in in clamps):
        return None
    shown = "(the model's default)" if r_tokens is None else r_tokens
    message = (f"r_tokens={shown} is more than PPT can remove (at most half of the non-class tokens of a "
               f"block, (N - 1) // 2): {describe_r_clamps(clamps).replace('r clamped', 'clamped')}; "
               f"tokens after each block: {[n_out for _, n_out in model.token_schedule]}")
    warnings.warn(message, UserWarning, stacklevel=2)
    return message


def apply_amp(model, amp_level):
    """Mixed precision for ``amp_level`` (O0: unchanged). Uses :func:`mindppt.utils.amp.apply_amp`, which
    keeps PPT's scores, threshold test and token sizes in float32, when it is available, else
    ``mindspore.amp.auto_mixed_precision``."""
    if amp_level in (None, "O0"):
        return model
    try:
        from mindppt.utils.amp import apply_amp as ppt_amp
    except ImportError:
        return ms.amp.auto_mixed_precision(model, amp_level)
    return ppt_amp(model, amp_level)


def copy_weights(src, dst_model):
    """Copy ``{name: Tensor/Parameter}`` (or a Cell's parameters) into ``dst_model`` (fresh buffers)."""
    if isinstance(src, ms.nn.Cell):
        src = {p.name: p for p in src.trainable_params()}  # weights only, not run-time settings
    params = {name: ms.Parameter(ms.Tensor(value.asnumpy()), name=name) for name, value in src.items()}
    for p in dst_model.get_parameters():  # run-time settings (the PPT threshold) keep their own value
        if p.name not in params:
            params[p.name] = ms.Parameter(ms.Tensor(p.asnumpy()), name=p.name)
    not_loaded, _ = ms.load_param_into_net(dst_model, params, strict_load=True)
    if not_loaded:
        raise RuntimeError(f"weights not copied into the evaluation model: {not_loaded[:5]}")


def _loaders(args, rank, group_size):
    shards = dict(num_shards=group_size, shard_id=rank) if group_size > 1 else {}
    common = dict(num_classes=args.num_classes, image_size=args.image_size, interpolation=args.interpolation,
                  mean=args.mean, std=args.std, crop_pct=args.crop_pct,
                  num_parallel_workers=args.num_parallel_workers, **shards)
    train_loader, n_train = create_loader(
        args.data_dir, args.train_split, batch_size=args.batch_size, is_training=True, seed=args.seed,
        repeated_aug=args.repeated_aug, mixup=args.mixup, cutmix=args.cutmix, mixup_prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob, label_smoothing=args.label_smoothing, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, auto_augment=args.auto_augment, color_jitter=args.color_jitter,
        re_prob=args.re_prob, **common)
    val_loader, n_val = create_loader(args.data_dir, args.val_split, batch_size=args.batch_size, is_training=False,
                                      class_names=train_loader.class_names, **common)
    return train_loader, n_train, val_loader, n_val


def _dump_weights(model, rank):
    directory = os.environ.get(DUMP_WEIGHTS_ENV)
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    arrays = {p.name: p.asnumpy() for p in model.get_parameters()}
    np.savez(os.path.join(directory, f"rank_{rank}.npz"), **arrays)


def train(args):
    """Run the training recipe ``args``; returns a summary dict.

    Raises ConfigError / DatasetError / CheckpointError for user errors, TrainingError when the loss
    becomes non-finite, TrainingInterrupted after SIGINT/SIGTERM (a resumable checkpoint was written).
    """
    start_time = time.perf_counter()
    try:
        setup_device(args.device_target, args.mode, None if args.distribute else args.device_id, args.jit_level)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    rank, group_size = init_distributed(args)
    is_main = rank == 0
    logger = get_logger(None, rank)  # stdout only until the data and the model are known to be usable

    train_loader, n_train, val_loader, n_val = _loaders(args, rank, group_size)
    steps_per_epoch = train_loader.get_dataset_size()

    ms.set_seed(args.seed)  # identical initial weights on every rank
    model = build_model(args)
    eval_model = build_model(args, for_eval=True, with_weights=False)
    gmacs, token_schedule = model_gmacs(model), [n_out for _, n_out in model.token_schedule]
    clamps = describe_r_clamps(r_clamps(model))
    params_m = sum(int(np.prod(p.shape)) for p in model.trainable_params()) / 1e6
    model, eval_model = apply_amp(model, args.amp_level), apply_amp(eval_model, args.amp_level)

    base_lr = resolve_lr(args, group_size)
    lr_values = create_lr_schedule(base_lr=base_lr, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
                                   warmup_epochs=args.warmup_epochs, epochs=args.epoch_size,
                                   steps_per_epoch=steps_per_epoch, scheduler=args.scheduler)
    optimizer = create_optimizer(model.trainable_params(), opt=args.opt, lr=lr_values,
                                 weight_decay=args.weight_decay, filter_bias_and_bn=args.filter_bias_and_bn,
                                 betas=args.betas, eps=args.eps, momentum=args.momentum)
    ema = EMA(model.trainable_params(), args.ema_decay) if args.ema else None
    train_step = TrainStep(NetWithLoss(model, SoftTargetCrossEntropy()), optimizer,
                           loss_scale_type=args.loss_scale_type, loss_scale=args.loss_scale,
                           clip_grad=args.clip_grad, ema=ema)

    images_per_step = args.batch_size * group_size
    state = RunState(epoch_size=args.epoch_size, steps_per_epoch=steps_per_epoch,
                     images_per_step=images_per_step, lr_values=lr_values)
    if args.resume:
        params, meta = load_train_state(args.resume)
        if meta["model"] != args.model:
            raise CheckpointError(f"resume checkpoint {args.resume} was written for model {meta['model']!r}, "
                                  f"this run trains {args.model!r}")
        if meta["steps_per_epoch"] != steps_per_epoch:
            raise CheckpointError(
                f"resume checkpoint {args.resume} was written with {meta['steps_per_epoch']} steps per epoch, "
                f"this run has {steps_per_epoch} (batch_size, number of devices or the dataset changed); "
                f"resuming would put the LR schedule and the data order out of step")
        if meta["epoch_size"] != args.epoch_size:
            logger.warning("resume checkpoint planned %d epochs, this run %d: the LR schedule is rebuilt for %d",
                           meta["epoch_size"], args.epoch_size, args.epoch_size)
        for note in restore_train_state(train_step, params, source=args.resume, ema_enabled=bool(args.ema)):
            logger.warning(note)
        state.epoch, state.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
        if state.step_in_epoch >= steps_per_epoch:  # written after the last step of an epoch
            state.epoch, state.step_in_epoch = state.epoch + 1, state.step_in_epoch - steps_per_epoch
        state.global_step = int(meta["global_step"])
        state.best_top1, state.best_epoch = float(meta["best_top1"]), int(meta["best_epoch"])
        state.last_good = (os.path.abspath(args.resume), f"epoch {state.epoch} step {state.step_in_epoch}")
        if state.global_step != state.epoch * steps_per_epoch + state.step_in_epoch:
            raise CheckpointError(f"resume checkpoint {args.resume} has inconsistent counters: {meta}")
        train_loader.set_init_step(state.global_step)

    logger = get_logger(args.output_dir, rank)  # now also output_dir/train.log (rank 0)
    if is_main:
        os.makedirs(args.output_dir, exist_ok=True)
        save_config(args, os.path.join(args.output_dir, "config.yaml"))
    logger.info("model %s: %.3fM parameters, %.4f GMACs (tokens after each block %s%s)", args.model, params_m,
                gmacs, token_schedule, f"; {clamps}, at most half the non-class tokens" if clamps else "")
    logger.info("data %s: %d train images (%d steps of %d x %d devices per epoch), %d val images", args.data_dir,
                n_train, steps_per_epoch, args.batch_size, group_size, n_val)
    logger.info("%s lr %.3e (warmup %.1f epochs from %.1e, %s to %.1e), weight decay %g, %d epochs, amp %s, "
                "loss scale %s, clip %g, ema %s, %s mode on %s, output %s", args.opt, base_lr, args.warmup_epochs,
                args.warmup_lr, args.scheduler, args.min_lr, args.weight_decay, args.epoch_size, args.amp_level,
                args.loss_scale_type, args.clip_grad, args.ema, args.mode, args.device_target, args.output_dir)
    if args.resume:
        logger.info("resumed from %s at %s", args.resume, state.where())

    reduce_sum = make_reduce_sum(group_size)

    def validate():
        copy_weights(model, eval_model)
        results = {"val": evaluate(eval_model, val_loader, batch_size=args.batch_size, all_reduce=reduce_sum)}
        if ema is not None:
            copy_weights(ema.state(), eval_model)
            results["ema"] = evaluate(eval_model, val_loader, batch_size=args.batch_size, all_reduce=reduce_sum)
        return results

    checkpointer = Checkpointer(train_step, args.output_dir, model_name=args.model, state=state, is_main=is_main,
                                save_every=args.save_every, keep=args.keep_checkpoints, logger=logger)
    monitor = TrainMonitor(state, checkpointer, logger, log_interval=args.log_interval, reduce_sum=reduce_sum,
                           group_size=group_size)
    epoch_end = EpochEnd(state, checkpointer, monitor, logger, validate=validate, val_interval=args.val_interval)

    if state.epoch >= args.epoch_size:
        logger.warning("the resume checkpoint already finished %d of %d epochs: nothing to train",
                       state.epoch, args.epoch_size)
    else:
        Model(train_step).train(args.epoch_size, train_loader, callbacks=[monitor, epoch_end],
                                dataset_sink_mode=False, initial_epoch=state.epoch)

    stop = state.stop
    if stop is not None and stop.kind == "nonfinite":
        raise TrainingError(stop.message, checkpoint=stop.checkpoint)
    if stop is not None and stop.kind == "signal":
        raise TrainingInterrupted(stop.message, stop.signum, stop.checkpoint)
    _dump_weights(model, rank)

    elapsed = time.perf_counter() - start_time
    summary = {
        "model": args.model, "epochs": state.epoch, "global_step": state.global_step,
        "best_top1": state.best_top1 if state.best_epoch > 0 else None,
        "best_epoch": state.best_epoch if state.best_epoch > 0 else None,
        "last_val": state.last_val, "history": state.history, "train_time_s": elapsed,
        "output_dir": args.output_dir,
        "last_ckpt": os.path.join(args.output_dir, "last.ckpt"),
        "best_ckpt": os.path.join(args.output_dir, "best.ckpt") if state.best_epoch > 0 else None,
        "rank": rank, "group_size": group_size,
    }
    best = f"best top1 {state.best_top1:.2f} at epoch {state.best_epoch}" if state.best_epoch > 0 else "no validation"
    logger.info("finished %d epochs in %s: %s; checkpoints in %s", state.epoch,
                time.strftime("%H:%M:%S", time.gmtime(elapsed)) if math.isfinite(elapsed) else "?", best,
                args.output_dir)
    return summary
