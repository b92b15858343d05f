"""Training: ``train(args)`` runs a whole recipe (``args`` from :func:`mindppt.config.parse_args`).

Built on MindSpore's own pieces: ``mindspore.dataset`` loaders, an ``nn.Optimizer`` indexing a per-step
LR table with its ``global_step`` (:mod:`.optim`, :mod:`.schedule`), the jitted
:class:`~.train_step.TrainStep` (gradients, data-parallel mean, loss scaling, clipping, EMA), and
``mindspore.train.Model.train`` with the callbacks of :mod:`.callbacks` (progress, faults, validation,
checkpoints through :mod:`.checkpointing`).

Hard distillation (``distillation_type: hard``, :mod:`.distillation`): a frozen teacher, built from
``teacher_checkpoint``, runs inside the training step on the same augmented images; it is named once in
the log, and the checkpoints hold the student's training state only.

Data parallel (``distribute: true`` under ``msrun``): DATA_PARALLEL with ``gradients_mean=True``, the
training and validation sets sharded by rank, the same seed on every rank (identical initial weights),
validation sums reduced over ranks, and only rank 0 writes the log, the merged config and the checkpoints.

Resuming (``--ckpt_path last.ckpt --resume_opt true``, mindcv's options) restores weights, optimizer
moments and step (so the LR position), loss
scale, EMA, best top-1 and the epoch/step counters, and restarts the data pipeline at that step with
``Dataset.set_init_step``: MindSpore's samplers are seeded by the seed and the epoch, so the remaining
batches are the same images in the same order as in an uninterrupted run. What is not replayed: the
random draws of augmentations (crop, RandAugment, erasing, mixup) and of dropout / drop path, whose
generators are not part of a checkpoint; a resumed run with those is statistically, not bitwise,
the same as an uninterrupted one. Without them (as in the tests) it ends with the same weights.
"""
import collections
import math
import os
import time

import mindspore as ms
from mindspore.train import Model

from mindppt.config import save_config
from mindppt.errors import TrainingError, TrainingInterrupted
from mindppt.logger import get_logger
from mindppt.models.amp import apply_amp
from mindppt.models.flops import count_params, model_gmacs
from mindppt.models.weights import copy_weights

from .build import (
    build_model,
    create_train_loaders,
    describe_r_clamps,
    init_distributed,
    make_reduce_sum,
    r_clamps,
    setup,
)
from .callbacks import EpochEnd, TrainMonitor
from .checkpointing import Checkpointer, RunState, resume
from .distillation import (
    DistillationNetWithLoss,
    HardDistillationLoss,
    build_teacher,
    check_distillation_options,
    checkpointed_state,
    describe_distillation,
    distilled_model,
)
from .ema import EMA
from .evaluate import evaluate
from .optim import create_optimizer
from .schedule import recipe_lr_values, resolve_lr
from .train_step import NetWithLoss, SoftTargetCrossEntropy, TrainStep

__all__ = ["train", "build_recipe_step", "build_train_step", "RecipeStep"]


RecipeStep = collections.namedtuple("RecipeStep", "network lr_values step")


def build_recipe_step(args, model, steps_per_epoch=1, group_size=1, teacher=None, amp_dtype=ms.float16):
    """The trainer's training step of the recipe ``args`` for ``model`` (from :func:`.build.build_model`):
    ``model`` under ``args.amp_level`` (in ``amp_dtype``), the recipe's per-step learning rates
    (:func:`.schedule.recipe_lr_values` at ``steps_per_epoch``, the peak lr scaled to ``group_size``
    devices) and :func:`build_train_step`. What :func:`train` runs, the benchmark times and the op-support
    check compiles. Returns ``RecipeStep(network, lr_values, step)``; ``network`` is the model as trained
    (apply_amp's wrapper at O2/O3)."""
    network = apply_amp(model, args.amp_level, amp_dtype)
    lr_values = recipe_lr_values(args, steps_per_epoch, group_size)
    return RecipeStep(network, lr_values, build_train_step(network, args, lr_values, teacher))


def build_train_step(model, args, lr_values, teacher=None):
    """The recipe's jitted training step: AdamW/SGD on ``lr_values``, loss scaling, clipping and EMA as
    ``args`` says. ``model``: the model, or apply_amp's wrapper of it. With ``distillation_type hard`` the
    loss is DeiT's hard distillation from ``teacher`` (:func:`.distillation.build_teacher`, which is called
    here when ``teacher`` is None); the optimizer and the EMA hold the student's parameters only."""
    optimizer = create_optimizer(model.trainable_params(), opt=args.opt, lr=lr_values,
                                 weight_decay=args.weight_decay, weight_decay_filter=args.weight_decay_filter,
                                 betas=args.betas, eps=args.eps, momentum=args.momentum, nesterov=args.use_nesterov)
    ema = EMA(model.trainable_params(), args.ema_decay) if args.ema else None
    if args.distillation_type == "hard":
        student = distilled_model(model)
        if teacher is None:
            teacher, _ = build_teacher(args, student)
        network = DistillationNetWithLoss(student, teacher, HardDistillationLoss(args.distillation_alpha))
    else:
        network = NetWithLoss(model, SoftTargetCrossEntropy())
    return TrainStep(network, optimizer, loss_scale_type=args.loss_scale_type, loss_scale=args.loss_scale,
                     clip_grad=args.clip_value if args.clip_grad else 0.0,
                     drop_overflow_update=args.drop_overflow_update, ema=ema)


def _summary(args, state, elapsed, rank, group_size):
    validated = state.best_epoch > 0
    return {
        "model": args.model, "epochs": state.epoch, "global_step": state.global_step,
        "best_top1": state.best_top1 if validated else None, "best_epoch": state.best_epoch if validated else None,
        "last_val": state.last_val, "history": state.history, "train_time_s": elapsed,
        "ckpt_save_dir": args.ckpt_save_dir, "last_ckpt": os.path.join(args.ckpt_save_dir, "last.ckpt"),
        "best_ckpt": os.path.join(args.ckpt_save_dir, "best.ckpt") if validated else None,
        "rank": rank, "group_size": group_size,
    }


def train(args):
    """Run the training recipe ``args``; returns a summary dict.

    Raises ConfigError / DatasetError / CheckpointError for user errors, TrainingError when the loss
    becomes non-finite, TrainingInterrupted after SIGINT/SIGTERM (a resumable checkpoint was written).
    """
    start_time = time.perf_counter()
    setup(args, None if args.distribute else args.device_id)
    rank, group_size = init_distributed(args)
    is_main = rank == 0
    logger = get_logger(None, rank, file_to_come=True)  # train.log opens once data and model are usable
    check_distillation_options(args)  # before the data is scanned

    train_loader, n_train, val_loader, n_val = create_train_loaders(args, rank, group_size)
    steps_per_epoch = train_loader.get_dataset_size()

    ms.set_seed(args.seed)  # identical initial weights on every rank
    model = build_model(args)
    eval_model = build_model(args, for_eval=True, with_weights=False)
    teacher, teacher_info = build_teacher(args, model) if args.distillation_type == "hard" else (None, None)
    distillation = describe_distillation(args, model, teacher_info)
    gmacs, token_schedule = model_gmacs(model), [n_out for _, n_out in model.token_schedule]
    clamps = describe_r_clamps(r_clamps(model))
    params_m = count_params(model) / 1e6
    eval_model = apply_amp(eval_model, args.val_amp_level)
    model, lr_values, train_step = build_recipe_step(args, model, steps_per_epoch, group_size, teacher)
    base_lr = resolve_lr(args, group_size)
    saved_state = checkpointed_state(train_step)  # the teacher is rebuilt from its checkpoint, never saved
    state = RunState(epoch_size=args.epoch_size, steps_per_epoch=steps_per_epoch,
                     images_per_step=args.batch_size * group_size, lr_values=lr_values)
    if args.resume_opt:
        resume(args.ckpt_path, saved_state, state, model_name=args.model, ema_enabled=bool(args.ema), logger=logger)
        train_loader.set_init_step(state.global_step)

    logger = get_logger(args.ckpt_save_dir, rank)  # now also ckpt_save_dir/train.log (rank 0)
    if is_main:
        save_config(args, os.path.join(args.ckpt_save_dir, "config.yaml"))
    for key, why in args.unused_options:
        logger.info("unused option %s (as in mindcv, but here %s)", key, why)
    logger.info("model %s: %.3fM parameters, %.4f GMACs (tokens after each block %s%s)", args.model, params_m,
                gmacs, token_schedule, f"; {clamps}, at most half the non-class tokens" if clamps else "")
    if distillation:
        logger.info(distillation)
    logger.info("data %s: %d train images (%d steps of %d x %d devices per epoch), %d val images", args.data_dir,
                n_train, steps_per_epoch, args.batch_size, group_size, n_val)
    logger.info("%s lr %.3e (warmup %.1f epochs from %.1e, %s to %.1e), weight decay %g, %d epochs, amp %s, "
                "loss scale %s, clip %s, ema %s, %s mode on %s, output %s", args.opt, base_lr, args.warmup_epochs,
                base_lr * args.warmup_factor, args.scheduler, args.min_lr, args.weight_decay, args.epoch_size,
                args.amp_level, args.loss_scale_type, f"{args.clip_value:g}" if args.clip_grad else "off", args.ema,
                args.mode, args.device_target, args.ckpt_save_dir)
    if args.resume_opt:
        logger.info("resumed from %s at %s", args.ckpt_path, state.where())

    reduce_sum = make_reduce_sum(group_size)
    ema = train_step.ema

    def validate():
        copy_weights(model, eval_model)
        results = {"val": evaluate(eval_model, val_loader, batch_size=args.batch_size, all_reduce=reduce_sum)}
        if ema is not None:
            copy_weights(ema.state(), eval_model)
            results["ema"] = evaluate(eval_model, val_loader, batch_size=args.batch_size, all_reduce=reduce_sum)
        return results

    checkpointer = Checkpointer(saved_state, args.ckpt_save_dir, model_name=args.model, state=state, is_main=is_main,
                                save_every=args.ckpt_save_interval, keep=args.keep_checkpoint_max, logger=logger,
                                policy=args.ckpt_save_policy)
    monitor = TrainMonitor(state, checkpointer, logger, log_interval=args.log_interval, reduce_sum=reduce_sum,
                           group_size=group_size)
    epoch_end = EpochEnd(state, checkpointer, monitor, logger, validate=validate if args.val_while_train else None,
                         val_interval=args.val_interval)
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
    elapsed = time.perf_counter() - start_time
    best = f"best top1 {state.best_top1:.2f} at epoch {state.best_epoch}" if state.best_epoch > 0 else "no validation"
    logger.info("finished %d epochs in %s: %s; checkpoints in %s", state.epoch,
                time.strftime("%H:%M:%S", time.gmtime(elapsed)) if math.isfinite(elapsed) else "?", best,
                args.ckpt_save_dir)
    return _summary(args, state, elapsed, rank, group_size)
