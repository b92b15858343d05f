"""mindcv-style model registry: ``@register_model`` constructors and ``create_model``."""
import difflib

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


def create_model(model_name, num_classes=1000, pretrained=False, in_channels=3, checkpoint_path="", **kwargs):
    """Build a registered model; ``checkpoint_path`` loads weights strictly (a different
    ``num_classes`` drops the head with a warning)."""
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
        from mindppt.utils.checkpoint import load_model_weights  # pylint: disable=import-outside-toplevel
        load_model_weights(model, checkpoint_path, model_name=model_name)
    return model
