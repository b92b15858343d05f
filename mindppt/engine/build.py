"""From a parsed configuration (``args`` of :func:`mindppt.config.parse_args`) to the objects a run
needs: device, model (with its weights and mixed precision), data loaders, learning rate and the
data-parallel context. Used by training, evaluation, the demo and the benchmark alike."""
import warnings

import mindspore as ms
import numpy as np
from mindspore.communication import get_group_size, get_rank, init
from mindspore.ops.communication import all_reduce

from mindppt.data import create_loader
from mindppt.device import setup_device
from mindppt.errors import CheckpointError, ConfigError
from mindppt.models import create_model, eval_preprocessing
from mindppt.models.amp import apply_amp
from mindppt.models.flops import count_params, model_gmacs

__all__ = ["setup", "init_distributed", "make_reduce_sum", "model_kwargs", "build_model",
           "build_eval_model",
           "resolve_preprocessing", "PREPROCESSING", "threshold_setting", "describe_threshold", "create_train_loaders",
           "create_eval_loader", "r_clamps", "describe_r_clamps", "warn_clamped_r_tokens"]


def setup(args, device_id=None):
    """Backend, execution mode and jit level of ``args``; invalid values become ConfigError."""
    try:
        return setup_device(args.device_target, args.mode, device_id, args.jit_level)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def init_distributed(args):
    """``(rank, group_size)``; with ``args.distribute`` initialise communication and DATA_PARALLEL."""
    if not args.distribute:
        return 0, 1
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
    def reduce_sum(vector):
        tensor = ms.Tensor(np.asarray(vector, dtype=np.float32))
        out = all_reduce(tensor)
        if isinstance(out, tuple):
            out = out[0]
        elif not isinstance(out, ms.Tensor):  # in-place variant returns a handle
            out = tensor
        return out.asnumpy().astype(np.float64)

    return reduce_sum


PREPROCESSING = ("image_resize", "interpolation", "crop_pct", "mean", "std")


def resolve_preprocessing(args):
    """Fill each preprocessing option left unset (None) from the model's own configuration
    (:func:`mindppt.models.eval_preprocessing`: input size, interpolation, crop_pct, mean and std, as timm's
    pretrained_cfg and mindcv's default_cfgs carry them). Returns ``args``."""
    if not any(getattr(args, key, "") is None for key in PREPROCESSING):
        return args
    try:
        defaults = eval_preprocessing(args.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for key in PREPROCESSING:
        if getattr(args, key, "") is None:
            setattr(args, key, defaults[key])
    return args


def model_kwargs(args, for_eval=False):
    """Keyword arguments for ``create_model(args.model, **model_kwargs(args))``. PPT options left unset
    (None) are omitted so the registered model's own defaults apply. Training: the training threshold,
    dropout and drop path, and ``ckpt_path`` as initial weights unless ``resume_opt`` (then the trainer
    restores the whole training state). ``for_eval``: the evaluation threshold, no dropout or drop path,
    the weights of ``ckpt_path`` (its EMA weights with ``ema``)."""
    kwargs = dict(num_classes=args.num_classes, pretrained=args.pretrained, img_size=args.image_resize,
                  in_channels=args.in_channels)
    if for_eval:
        threshold = args.eval_threshold
        kwargs.update(drop_rate=0.0, drop_path_rate=0.0, checkpoint_path=args.ckpt_path or "", ema=bool(args.ema))
    else:
        threshold = args.threshold
        kwargs.update(drop_rate=args.drop_rate, drop_path_rate=args.drop_path_rate,
                      checkpoint_path="" if args.resume_opt else (args.ckpt_path or ""))
    for key, value in (("r_tokens", args.r_tokens), ("pp_loc_list", args.pp_loc_list),
                       ("threshold", threshold), ("prop_attn", args.prop_attn)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def build_model(args, for_eval=False, with_weights=True, **extra):
    """``create_model`` from the config (weights loaded by its one loader; ``extra``: more keywords such as
    ``trace_source``); invalid model settings become ConfigError. No mixed precision yet (see :func:`apply_amp`)."""
    kwargs = dict(model_kwargs(args, for_eval=for_eval), **extra)
    if not with_weights:
        kwargs.pop("checkpoint_path")
        kwargs.pop("ema", None)
    try:
        model = create_model(args.model, **kwargs)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build model {args.model!r}: {e}") from None
    warn_clamped_r_tokens(model, args.r_tokens)
    return model


def build_eval_model(args):
    """The model of ``args`` at the evaluation threshold with the weights of ``args.ckpt_path``, AMP
    (``val_amp_level``) applied. Returns ``(model, info)``; ``info`` has ``gmacs``, ``params_m``,
    ``ckpt_path``, ``token_schedule`` and ``threshold`` (see :func:`threshold_setting`)."""
    path = args.ckpt_path
    if not path:
        raise ConfigError("no weights to evaluate: pass --ckpt_path (a checkpoint written by tools/train.py, or "
                          "converted weights)")
    setup(args, args.device_id)
    model = build_model(args, for_eval=True)
    info = {"gmacs": model_gmacs(model),
            "params_m": count_params(model) / 1e6,
            "ckpt_path": str(path), "token_schedule": list(model.token_schedule),
            "threshold": threshold_setting(model)}
    return apply_amp(model, args.val_amp_level), info


def threshold_setting(model):
    """The model's threshold as a config would state it: None for a dense model, one number when every
    compression block uses it, else the list with one value per compression block."""
    values = getattr(model, "thresholds", [])
    if not values:
        return None
    return values[0] if len(set(values)) == 1 else list(values)


def describe_threshold(threshold):
    """``7e-05`` or ``[0.003, 0.002] (per block)`` for messages."""
    if isinstance(threshold, (list, tuple)):
        return "[" + ", ".join(f"{t:g}" for t in threshold) + "] (per block)"
    return f"{threshold:g}"


def _loader_options(args, rank, group_size):
    shards = dict(num_shards=group_size, shard_id=rank) if group_size > 1 else {}
    return dict(batch_size=args.batch_size, num_classes=args.num_classes, image_size=args.image_resize,
                interpolation=args.interpolation, mean=args.mean, std=args.std, crop_pct=args.crop_pct,
                num_parallel_workers=args.num_parallel_workers, **shards)


def create_eval_loader(args, class_names=None, rank=0, group_size=1, indices=None):
    """The evaluation loader of ``data_dir/val_split`` (``indices``: only those images of it, in that
    order) and its number of images."""
    return create_loader(args.data_dir, args.val_split, is_training=False, class_names=class_names,
                         indices=indices, **_loader_options(args, rank, group_size))


def create_train_loaders(args, rank=0, group_size=1):
    """``(train_loader, n_train, val_loader, n_val)``; the validation classes follow the training set's."""
    train_loader, n_train = create_loader(
        args.data_dir, args.train_split, is_training=True, seed=args.seed, aug_repeats=args.aug_repeats,
        shuffle=args.shuffle, drop_remainder=args.drop_remainder,
        mixup=args.mixup, cutmix=args.cutmix, mixup_prob=args.cutmix_prob, switch_prob=args.mixup_switch_prob,
        label_smoothing=args.label_smoothing, scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
        auto_augment=args.auto_augment, color_jitter=args.color_jitter, re_prob=args.re_prob,
        re_scale=args.re_scale, re_ratio=args.re_ratio, re_value=args.re_value, re_max_attempts=args.re_max_attempts,
        **_loader_options(args, rank, group_size))
    val_loader, n_val = create_eval_loader(args, train_loader.class_names, rank, group_size)
    return train_loader, n_train, val_loader, n_val


def r_clamps(model):
    """``[(block, asked, removed, tokens_in)]`` for each block that removes fewer tokens than asked: a
    compression removes at most half of its unprotected tokens, ``(N - 1) // 2``, or ``(N - 2) // 2`` with
    a distillation token (PPT's and ToMe's rule)."""
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
    """Warn (UserWarning) when a block was asked to remove at least as many tokens as it has patch
    tokens: that is a setting PPT cannot mean, not its halving rule (e.g. r=50 at blocks 3/6/9 of DeiT
    becomes 48 at block 9, as in the paper, and is only reported with the token schedule). Returns the
    message, or None."""
    clamps = r_clamps(model)
    protected = getattr(model, "num_prefix_tokens", 1)
    if not any(asked >= n_in - protected for _, asked, _, n_in in clamps):
        return None
    shown = "(the model's default)" if r_tokens is None else r_tokens
    message = (f"r_tokens={shown} is more than PPT can remove (at most half of the patch tokens of a "
               f"block, (N - {protected}) // 2): {describe_r_clamps(clamps).replace('r clamped', 'clamped')}; "
               f"tokens after each block: {[n_out for _, n_out in model.token_schedule]}")
    warnings.warn(message, UserWarning, stacklevel=2)
    return message
