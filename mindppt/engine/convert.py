"""Convert DeiT/timm/LV-ViT weights (.pth, .safetensors, .npz, .ckpt) into a MindSpore .ckpt of a registered
model: read, recognise the model (unless named), check every tensor against the model, drop a head of
another size, save atomically."""

from mindppt.errors import CheckpointError, CheckpointSaveError, ConfigError, OutputError
from mindppt.formats import read_state_dict
from mindppt.io import check_writable, save_checkpoint_atomic
from mindppt.models import count_params, create_model, infer_model_name, model_entrypoint
from mindppt.models.recognize import same_shape_models, suggest_model
from mindppt.models.weights import load_state_dict_into_model

__all__ = ["convert_weights"]

# A save failing with these is the destination's fault (exit 2); any other OSError (disk full) is not.


def _head_classes(state):
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else 1000


def convert_weights(src, dst, model=None, num_classes=None):
    """Convert the checkpoint ``src`` into ``dst`` (a MindSpore .ckpt that ``create_model(name,
    checkpoint_path=dst)`` loads, also into the ``ppt_`` variant of the same model).

    ``model``: the registered model to check the tensors against; None recognises it from the tensors
    (:func:`mindppt.models.infer_model_name`). ``num_classes``: None takes the checkpoint's head size (1000
    without a head); another size than the checkpoint's drops the head with a warning.

    Returns a summary: ``model``, ``inferred_from`` (the evidence, None when ``model`` was given),
    ``same_shapes`` (other models these weights fit, e.g. the ViT AugReg twin of a DeiT), ``num_classes``,
    ``tensors`` (read from ``src``), ``loaded`` and ``not_loaded`` (parameter names), ``parameters`` (values
    in the written model), ``src``, ``dst``.

    Raises ConfigError (unknown ``model``, or a model that cannot be built with ``num_classes``),
    CheckpointError (``src`` unreadable, not recognised, or not fitting ``model``: the message names the
    model it looks like), OutputError (``dst`` cannot be written there), CheckpointSaveError (the save
    failed otherwise, e.g. disk full). Nothing is written unless the conversion succeeds."""
    src, dst = str(src), str(dst)
    check_writable(dst)  # before any work
    if model is not None:
        try:
            model_entrypoint(model)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    state = read_state_dict(src)
    if model is None:
        name, inferred_from = infer_model_name(state)
    else:
        name, inferred_from = model, None
    if num_classes is None:
        num_classes = _head_classes(state)
    try:
        net = create_model(name, num_classes=num_classes)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot build {name} with num_classes={num_classes}: {err}") from None
    try:
        result = load_state_dict_into_model(net, state, source=src, model_name=name)
    except CheckpointError as err:
        if inferred_from is not None:
            raise
        raise CheckpointError(f"{err}{suggest_model(state, name)}", missing=err.missing,
                              unexpected=err.unexpected, mismatched=err.mismatched) from None
    try:
        save_checkpoint_atomic(net, dst)
    except OutputError:
        raise
    except OSError as err:
        raise CheckpointSaveError(err.errno, f"{err.strerror or err}; nothing was written") from None
    return {"model": name, "inferred_from": inferred_from,
            "same_shapes": same_shape_models(name) if inferred_from is not None else [],
            "num_classes": num_classes, "tensors": len(state), "loaded": list(result["loaded"]),
            "not_loaded": list(result["not_loaded"]),
            "parameters": count_params(net), "src": src, "dst": dst}
