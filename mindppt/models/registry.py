"""mindcv-style model registry: ``@register_model`` constructors and ``create_model``."""
import difflib

from .weights import load_weights

_MODELS = {}


def register_model(fn):
    """Register a constructor under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models():
    return sorted(_MODELS)


def is_model(name):
    return name in _MODELS


def create_model(model_name, num_classes=1000, pretrained=False, in_channels=3, checkpoint_path="", ema=False,
                 **kwargs):
    """Build a registered model. ``checkpoint_path`` loads weights of any supported format strictly
    (:func:`mindppt.models.weights.load_weights`: converted or original DeiT/timm weights, a MindSpore
    ``.ckpt``, a training checkpoint of tools/train.py, whose EMA weights ``ema=True`` takes); a different
    ``num_classes`` drops the head with a warning."""
    if model_name not in _MODELS:
        close = difflib.get_close_matches(model_name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(list_models())}"
        raise ValueError(f"unknown model {model_name!r}{hint}")
    if pretrained:
        raise ValueError(
            f"pretrained=True: no download is available for {model_name}. Convert DeiT/timm weights with "
            "`python tools/convert_weights.py --src deit.pth --dst deit.ckpt` and pass checkpoint_path=deit.ckpt")
    model = _MODELS[model_name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    if checkpoint_path:
        load_weights(model, checkpoint_path, use_ema=ema, model_name=model_name)
    elif ema:
        raise ValueError("ema=True selects the EMA weights of a checkpoint: pass checkpoint_path too")
    return model
