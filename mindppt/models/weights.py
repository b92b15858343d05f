"""Weights into models: one loader for every checkpoint format, strict name and shape checks.

:func:`load_weights` (what ``create_model(..., checkpoint_path=...)`` calls) reads any format of
:mod:`mindppt.formats` (official DeiT / timm ``.pth``, ``.safetensors``, ``.npz``, MindSpore ``.ckpt``,
and mindppt training checkpoints, whose model or EMA weights it takes), maps the timm names onto the
model's parameters and refuses anything that does not fit, naming every missing, unexpected and
wrongly-shaped parameter. Two mismatches are tolerated: a position embedding over another patch grid
(weights of another input size, e.g. 224 px weights in a model built with ``img_size=384``) is resized
bicubically to the model's grid, class and distillation tokens kept (:mod:`.pos_embed`, one INFO line on
the ``mindppt.models.weights`` logger); a classifier head of a different size (another ``num_classes``)
is dropped with a warning and the model keeps its own freshly initialised head. A distilled DeiT
checkpoint (``dist_token``, ``head_dist``) loads only into a distilled model
(``deit_*_distilled_patch16_224``): the architectures differ by a token and a head.

Run-time settings stored as Parameters (the PPT threshold, see :func:`mindppt.models.ppt.is_runtime_setting`)
are not weights: every load keeps the model's configured value (:func:`keep_runtime_settings`).
"""
import logging
import warnings
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import mindspore as ms
import numpy as np

from mindppt.errors import CheckpointError
from mindppt.formats import StateDict, read_state_dict
from mindppt.formats.train_state import is_train_state, model_weights_from_state

from .pos_embed import resize_pos_embed, square_grid
from .ppt import is_runtime_setting

__all__ = ["read_weights", "load_weights", "load_state_dict_into_model", "convert_state_dict", "model_param_shapes",
           "keep_runtime_settings", "copy_weights"]


_logger = logging.getLogger(__name__)

_DISTILLED_KEYS = ("dist_token", "head_dist.weight", "head_dist.bias")
_HEAD_KEYS = ("head.weight", "head.bias")


def model_param_shapes(model) -> "OrderedDict[str, tuple]":
    """``{parameter name: shape}`` of the model's weights in order (names as ``load_param_into_net``
    matches them). Run-time settings stored as parameters (the PPT threshold) are not weights: they
    keep the model's configured value and are never read from a checkpoint."""
    return OrderedDict((p.name, tuple(p.shape)) for _, p in model.parameters_and_names()
                       if not is_runtime_setting(p.name))


def _model_dtypes(model) -> Dict[str, np.dtype]:
    table = {ms.float32: np.float32, ms.float16: np.float16, ms.float64: np.float64, ms.int64: np.int64,
             ms.int32: np.int32, ms.int16: np.int16, ms.int8: np.int8, ms.uint8: np.uint8, ms.bool_: np.bool_}
    # anything else (bfloat16) is handed over as float32 and cast by MindSpore
    return {p.name: np.dtype(table.get(p.dtype, np.float32)) for _, p in model.parameters_and_names()}


# torch BatchNorm buffers and their MindSpore names (LV-ViT's convolutional stem)
_BATCH_NORM_NAMES = {".running_mean": ".moving_mean", ".running_var": ".moving_variance"}
_IGNORED_SUFFIXES = (".num_batches_tracked",)  # a torch BatchNorm counter, not a weight


def _aliases(name: str):
    """Alternative model names for a timm name (MindSpore norms call their affine gamma/beta and their
    running statistics moving_mean/moving_variance)."""
    yield name
    if name.endswith(".weight"):
        yield name[: -len(".weight")] + ".gamma"
    elif name.endswith(".bias"):
        yield name[: -len(".bias")] + ".beta"
    for torch_suffix, ms_suffix in _BATCH_NORM_NAMES.items():
        if name.endswith(torch_suffix):
            yield name[: -len(torch_suffix)] + ms_suffix


def _fmt_names(names, limit=20):
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ... (%d more)' % (len(names) - limit) if len(names) > limit else ''}]"


def _fit_pos_embed(mapped, model_shape, model, source, model_name):
    """The checkpoint's ``pos_embed``, resized to the model's patch grid when only the grid differs (same
    width, same prefix tokens). Another width or other prefix tokens are returned unchanged: the shape
    check reports them with the rest of the mismatch (a distilled checkpoint into a plain model is refused
    before)."""
    pos_embed = mapped["pos_embed"]
    prefix = model.num_prefix_tokens
    checkpoint_prefix = sum(name in mapped for name in ("cls_token", "dist_token"))
    if (tuple(pos_embed.shape) == model_shape or pos_embed.ndim != 3 or pos_embed.shape[0] != 1
            or pos_embed.shape[2] != model_shape[2] or checkpoint_prefix != prefix):
        return pos_embed
    new_grid = square_grid(model_shape[1], prefix)  # a model's grid is square by construction
    try:
        old_grid = square_grid(pos_embed.shape[1], prefix)
    except ValueError as e:
        raise CheckpointError(
            f"checkpoint {source}: pos_embed {tuple(pos_embed.shape)} cannot be resized to the "
            f"{new_grid[0]}x{new_grid[1]} patch grid of {model_name}: {e}", mismatched=["pos_embed"]) from None
    kept = "class token" if prefix == 1 else "class and distillation tokens"
    _logger.info("checkpoint %s: pos_embed resized from the %dx%d to the %dx%d patch grid of %s (bicubic), "
                 "%s kept", source, *old_grid, *new_grid, model_name, kept)
    return resize_pos_embed(pos_embed, new_grid, old_grid, prefix)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model, *, strict: bool = True,
                       source: str = "checkpoint", model_name: Optional[str] = None) -> StateDict:
    """Map a timm/DeiT-named state dict onto ``model``'s parameter names and check it fits.

    Returns ``{model_param_name: array}`` cast to each parameter's dtype. Raises :class:`CheckpointError`
    listing every missing, unexpected and wrongly-shaped parameter. With ``strict=False`` missing and
    unexpected names are only warned about; shape mismatches are always errors, except a ``pos_embed``
    over another patch grid (resized to the model's, see :func:`_fit_pos_embed`) and a head of a different
    shape alone (other ``num_classes``), which is dropped with a warning.
    """
    model_name = model_name or type(model).__name__
    shapes = model_param_shapes(model)
    dtypes = _model_dtypes(model)

    distilled = [k for k in _DISTILLED_KEYS if k in state_dict]
    if distilled and not any(k in shapes for k in distilled):
        raise CheckpointError(
            f"checkpoint {source} is a distilled DeiT (has {', '.join(distilled)}) and {model_name} has no "
            f"distillation token; load it into a distilled model (deit_*_distilled_patch16_224 or its "
            f"ppt_ variant)"
        )
    if not distilled and "dist_token" in shapes:
        raise CheckpointError(
            f"checkpoint {source} has no distillation token (dist_token, head_dist) and {model_name} is a "
            f"distilled DeiT; load it into a model without 'distilled' in its name (deit_*_patch16_224 or "
            f"its ppt_ variant)"
        )

    mapped: StateDict = {}
    unexpected = []
    for name, arr in state_dict.items():
        if is_runtime_setting(name) or name.endswith(_IGNORED_SUFFIXES):
            continue  # a run-time setting (the model's configured value wins) or a torch counter
        target = next((a for a in _aliases(name) if a in shapes), None)
        if target is None:
            unexpected.append(name)
        elif target in mapped:
            raise CheckpointError(f"checkpoint {source} maps two tensors onto {target}")
        else:
            mapped[target] = np.asarray(arr)
    if "pos_embed" in mapped and "pos_embed" in shapes:
        mapped["pos_embed"] = _fit_pos_embed(mapped, shapes["pos_embed"], model, source, model_name)
    missing = [n for n in shapes if n not in mapped]
    mismatched = [n for n, a in mapped.items() if tuple(a.shape) != shapes[n]]

    head_only = mismatched and all(n in _HEAD_KEYS or n.startswith("head.") for n in mismatched)
    if head_only:
        desc = ", ".join(f"{n} {tuple(mapped[n].shape)} vs model {shapes[n]}" for n in mismatched)
        msg = (f"checkpoint {source}: classifier head has a different shape ({desc}), i.e. another "
               f"num_classes; dropping it and keeping {model_name}'s freshly initialised head")
        warnings.warn(msg, stacklevel=2)
        for n in mismatched:
            del mapped[n]
        mismatched = []
    # a dropped head is not reported as missing: the model keeps its own
    problems = []
    if missing and strict:
        problems.append(f"missing {_fmt_names(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected {_fmt_names(unexpected)}")
    if mismatched:
        problems.append("shape mismatch " + _fmt_names(
            [f"{n}: file {tuple(mapped[n].shape)} vs model {shapes[n]}" for n in mismatched]))
    if problems:
        hint = ""
        if "cls_token" in mismatched:
            hint = (f" (the checkpoint's embed dim is {mapped['cls_token'].shape[-1]}, "
                    f"the model's {shapes['cls_token'][-1]})")
        raise CheckpointError(
            f"checkpoint {source} does not match model {model_name}: " + ", ".join(problems) + hint,
            missing=missing if strict else (), unexpected=unexpected if strict else (),
            mismatched=mismatched)
    if not strict and (missing or unexpected):
        msg = (f"checkpoint {source} loaded non-strictly into {model_name}: "
               f"missing {_fmt_names(missing)}, unexpected {_fmt_names(unexpected)}")
        warnings.warn(msg, stacklevel=2)

    return OrderedDict(
        (n, np.ascontiguousarray(mapped[n].astype(dtypes[n], copy=False))) for n in shapes if n in mapped
    )


def load_state_dict_into_model(model, state_dict: Mapping[str, np.ndarray], *, strict: bool = True,
                               source: str = "checkpoint", model_name: Optional[str] = None) -> Dict[str, list]:
    """Convert an already-read state dict (see :func:`convert_state_dict`) and load it into ``model``.

    Returns ``{"loaded": [...], "not_loaded": [...]}`` (``not_loaded`` is non-empty only for a dropped
    head or with ``strict=False``).
    """
    params = convert_state_dict(state_dict, model, strict=strict, source=source, model_name=model_name)
    param_dict = keep_runtime_settings(model, {n: ms.Parameter(ms.Tensor(a), name=n) for n, a in params.items()})
    not_loaded, ckpt_not_loaded = ms.load_param_into_net(model, param_dict, strict_load=True)
    if ckpt_not_loaded:
        raise CheckpointError(f"checkpoint {source}: MindSpore did not load {_fmt_names(ckpt_not_loaded)}")
    return {"loaded": list(params), "not_loaded": list(not_loaded)}


def keep_runtime_settings(model, param_dict):
    """``param_dict`` (name -> Parameter) with every run-time setting of ``model`` set to the model's own
    current value, whatever the dict held: loading weights never changes a configured threshold."""
    param_dict = {name: p for name, p in param_dict.items() if not is_runtime_setting(name)}
    for param in model.get_parameters():
        if is_runtime_setting(param.name):
            param_dict[param.name] = ms.Parameter(ms.Tensor(param.asnumpy()), name=param.name, requires_grad=False)
    return param_dict


def read_weights(path, *, use_ema=False):
    """The model weights in ``path`` (any supported format; of a training checkpoint, its model or, with
    ``use_ema``, its EMA weights) and what they are, for logs: ``(state dict, description)``.
    Raises CheckpointError for unreadable files and for ``use_ema`` on plain weights."""
    state_dict = read_state_dict(path)
    if use_ema and not is_train_state(state_dict):
        raise CheckpointError(f"ema=true loads the EMA weights of a training checkpoint, but {path} holds plain "
                              f"weights; pass ema=false (--ema false)")
    if not is_train_state(state_dict):
        return state_dict, "weights"
    what = "EMA weights of the training checkpoint" if use_ema else "model weights of the training checkpoint"
    return model_weights_from_state(state_dict, use_ema=use_ema), what


def load_weights(model, path, *, use_ema=False, strict=True, model_name=None):
    """Read ``path`` (:func:`read_weights`), convert, check and load it into ``model`` in place. Returns
    what was loaded, for logs.
    Raises CheckpointError for unreadable files and for weights that do not fit the model."""
    state_dict, what = read_weights(path, use_ema=use_ema)
    load_state_dict_into_model(model, state_dict, strict=strict, source=str(path), model_name=model_name)
    return what


def copy_weights(src, dst_model):
    """Copy ``{name: Tensor/Parameter}`` (or a Cell's trainable parameters) into ``dst_model`` (fresh
    buffers; run-time settings keep ``dst_model``'s values)."""
    if isinstance(src, ms.nn.Cell):
        src = {p.name: p for p in src.trainable_params()}
    params = {name: ms.Parameter(ms.Tensor(value.asnumpy()), name=name) for name, value in src.items()}
    not_loaded, _ = ms.load_param_into_net(dst_model, keep_runtime_settings(dst_model, params), strict_load=True)
    if not_loaded:
        raise RuntimeError(f"weights not copied into the evaluation model: {not_loaded[:5]}")
