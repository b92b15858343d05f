"""mindcv-style model registry: ``@register_model`` constructors, each with its preprocessing, and
``create_model``.

Every model module keeps a ``default_cfgs`` dict beside its constructors (as mindcv's and timm's model
files do); ``@register_model`` records ``default_cfgs[name]``, so a constructor without one cannot be
registered. A cfg holds mindcv's keys ``num_classes``, ``input_size`` ``(channels, S, S)``,
``interpolation``, ``crop_pct``, ``first_conv`` and ``classifier`` plus timm's ``mean`` and ``std``.
``mean`` and ``std`` are in **pixel units, 0-255** (mindcv's ``IMAGENET_DEFAULT_MEAN`` is
``[0.485 * 255, ...]``): normalised = (pixel - mean) / std. ``num_classes`` and the classifier names are
those of the published weights (the digits demo models: its 10 classes).
"""
import copy
import difflib
import fnmatch
import sys

from .weights import load_weights

__all__ = ["register_model", "list_models", "is_model", "model_entrypoint", "get_pretrained_cfg",
           "eval_preprocessing", "create_model", "make_cfg", "IMAGENET_MEAN_255", "IMAGENET_STD_255",
           "INCEPTION_MEAN_255", "INCEPTION_STD_255"]

# Normalisation constants in pixel units (0-255), as mindcv's mindcv/data/constants.py.
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
INCEPTION_MEAN_255 = (0.5 * 255, 0.5 * 255, 0.5 * 255)  # timm's IMAGENET_INCEPTION_MEAN (ViT AugReg)
INCEPTION_STD_255 = (0.5 * 255, 0.5 * 255, 0.5 * 255)

_MODELS = {}
_CFGS = {}


def make_cfg(*, image_size, interpolation, crop_pct, mean, std, num_classes=1000, in_channels=3,
             first_conv="patch_embed.proj", classifier="head"):
    """A model's default cfg (see the module docstring); ``mean`` and ``std`` in pixel units (0-255)."""
    return {"num_classes": num_classes, "input_size": (in_channels, image_size, image_size),
            "interpolation": interpolation, "crop_pct": crop_pct, "mean": tuple(mean), "std": tuple(std),
            "first_conv": first_conv, "classifier": classifier}


def register_model(fn):
    """Register a constructor under its function name, with ``default_cfgs[name]`` of its module."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
    if name not in cfgs:
        raise ValueError(f"model {name!r} has no entry in {fn.__module__}.default_cfgs (its preprocessing)")
    _MODELS[name] = fn
    _CFGS[name] = cfgs[name]
    return fn


def list_models(filter=""):  # mindcv's and timm's keyword name
    """Sorted names of the registered models; ``filter``: a shell-style pattern (``"deit_*"``,
    ``"*distilled*"``) or a list of them (a name matching any is listed)."""
    patterns = [filter] if isinstance(filter, str) else list(filter)
    if not any(patterns):
        return sorted(_MODELS)
    return sorted(name for name in _MODELS if any(fnmatch.fnmatchcase(name, p) for p in patterns if p))


def is_model(name):
    return name in _MODELS


def model_entrypoint(name):
    """The constructor registered as ``name``; ValueError naming close matches for an unknown name."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _MODELS[name]


def get_pretrained_cfg(name):
    """A copy of the default cfg of model ``name`` (see the module docstring)."""
    model_entrypoint(name)
    return copy.deepcopy(_CFGS[name])


def eval_preprocessing(name):
    """The evaluation preprocessing of model ``name``, under mindcv's option names: ``image_resize``
    (the side of the centre crop fed to the model), ``interpolation``, ``crop_pct`` (resize the short side
    to ``image_resize / crop_pct`` first), ``mean`` and ``std`` (lists, pixel units 0-255)."""
    cfg = get_pretrained_cfg(name)
    return {"image_resize": cfg["input_size"][-1], "interpolation": cfg["interpolation"],
            "crop_pct": cfg["crop_pct"], "mean": list(cfg["mean"]), "std": list(cfg["std"])}


def create_model(model_name, num_classes=1000, pretrained=False, in_channels=3, checkpoint_path="", ema=False,
                 **kwargs):
    """Build a registered model. ``checkpoint_path`` loads weights of any supported format strictly
    (:func:`mindppt.models.weights.load_weights`: converted or original DeiT/timm weights, a MindSpore
    ``.ckpt``, a training checkpoint of tools/train.py, whose EMA weights ``ema=True`` takes); a different
    ``num_classes`` drops the head with a warning.

    The model carries ``default_cfg``: the registered cfg (:func:`get_pretrained_cfg`) with this model's
    ``num_classes`` and ``input_size`` (another ``img_size`` or ``in_channels`` than the registered ones)."""
    constructor = model_entrypoint(model_name)
    if pretrained:
        raise ValueError(
            f"pretrained=True: no download is available for {model_name}. Convert DeiT/timm weights with "
            "`python tools/convert_weights.py --src deit.pth --dst deit.ckpt` and pass checkpoint_path=deit.ckpt")
    model = constructor(num_classes=num_classes, in_channels=in_channels, **kwargs)
    cfg = get_pretrained_cfg(model_name)
    cfg.update(num_classes=num_classes, input_size=(in_channels, model.img_size, model.img_size))
    model.default_cfg = cfg
    if checkpoint_path:
        load_weights(model, checkpoint_path, use_ema=ema, model_name=model_name)
    elif ema:
        raise ValueError("ema=True selects the EMA weights of a checkpoint: pass checkpoint_path too")
    return model
