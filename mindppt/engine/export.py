"""Export a model as a static-shape graph (``mindspore.export``) with a side file (``PREFIX.json``) that
records what the graph needs and has baked in: model, input shape, preprocessing, PPT's r and thresholds,
class names. The exported model is built with the portable MindSpore ops (``fused_cpu.disabled()``): the
fused CPU GELU is an ``ops.Custom`` AOT op that would tie the graph to a ``.so`` on this machine."""
import json
import os
import re

import mindspore as ms
import numpy as np

from mindppt.data.class_names import resolve_class_names
from mindppt.engine.build import build_model, setup
from mindppt.errors import ExportError
from mindppt.io import atomic_output, atomic_write, check_writable
from mindppt.models import fused_cpu
from mindppt.models.amp import apply_amp

__all__ = ["EXPORT_FORMATS", "build_export_model", "export_model", "read_export_info", "describe_export_failure"]

EXPORT_FORMATS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


def build_export_model(args):
    """The evaluation model of ``args`` (``eval_threshold``, weights of ``ckpt_path`` if
    set) with portable ops only, in inference mode, AMP applied."""
    setup(args, args.device_id)
    with fused_cpu.disabled():
        model = build_model(args, for_eval=True, with_weights=bool(args.ckpt_path))
    model.set_train(False)
    return model, apply_amp(model, args.val_amp_level)


def describe_export_failure(file_format, error):
    """One line naming the op MindSpore could not export and why."""
    text = " ".join(str(error).split("----")[0].split())
    op = re.search(r"key (\w+) in convert map", text)
    if op:
        return f"MindSpore {ms.__version__} has no {file_format} conversion for op {op.group(1)} ({text})"
    return f"{file_format} export failed: {text}"


def export_model(args, prefix, file_format="MINDIR", batch_size=1, class_index=None):
    """Write ``prefix`` + the format's suffix and ``prefix.json``; returns the side-file dict. OutputError,
    with nothing written, when either file cannot be written there."""
    file_format = file_format.upper()
    if file_format not in EXPORT_FORMATS:
        raise ExportError(f"unknown file format {file_format!r}; choose from {', '.join(EXPORT_FORMATS)}")
    prefix = os.fspath(prefix)
    path = prefix + EXPORT_FORMATS[file_format]
    for output in (path, prefix + ".json"):
        check_writable(output)
    model, net = build_export_model(args)
    size = args.image_resize
    shape = (batch_size, 3, size, size)
    try:
        with atomic_output(path, suffix=EXPORT_FORMATS[file_format]) as tmp:
            ms.export(net, ms.Tensor(np.zeros(shape, np.float32)), file_name=tmp, file_format=file_format)
            os.chmod(tmp, 0o644)  # MindSpore writes it owner-read-only; a deployed file is read by a server user
    except (RuntimeError, ValueError, TypeError) as e:
        raise ExportError(describe_export_failure(file_format, e)) from None
    names, names_source = resolve_class_names(args.num_classes, class_index, args.data_dir, args.train_split)
    info = {
        "file": os.path.basename(path), "file_format": file_format, "bytes": os.path.getsize(path),
        "mindspore": ms.__version__, "model": args.model, "weights": args.ckpt_path or None,
        "input_shape": list(shape), "input_dtype": "float32", "amp_level": args.val_amp_level,
        "fused_cpu_kernels": False,
        "ppt": {"compression_blocks": list(model.compression_blocks),
                "r_tokens": [n_in - n_out for n_in, n_out in model.token_schedule if n_out < n_in],
                "thresholds": [float(f"{t:.7g}") for t in model.thresholds],  # float32 digits
                "token_schedule": [list(t) for t in model.token_schedule]},
        "preprocess": {"image_size": size, "crop_pct": args.crop_pct, "interpolation": args.interpolation,
                       "mean": list(args.mean), "std": list(args.std), "layout": "NCHW, RGB"},
        "num_classes": args.num_classes, "class_names_source": names_source, "class_names": names,
    }
    atomic_write(prefix + ".json", json.dumps(info, indent=2) + "\n")
    return info


def read_export_info(prefix):
    """The side file ``prefix.json`` of an exported graph."""
    path = prefix + ".json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read the side file {path} of the exported graph: {e}") from None
