"""Predict image files with a checkpoint (a Cell built from the config) or an exported graph
(``tools/export.py``: ``PREFIX.mindir`` + ``PREFIX.json``): the evaluation transforms of
:func:`mindppt.data.create_transforms`, batches padded to one shape, top-k classes with probabilities."""
import os
import warnings

import mindspore as ms
import numpy as np
from mindspore import nn

from mindppt.data import create_transforms
from mindppt.data.class_names import resolve_class_names
from mindppt.data.dataset import IMG_EXTENSIONS, load_rgb
from mindppt.engine.build import build_model, setup
from mindppt.engine.evaluate import pad_batch
from mindppt.engine.export import EXPORT_FORMATS, read_export_info
from mindppt.errors import ConfigError, DatasetError, DatasetWarning, ExportError
from mindppt.io import atomic_output
from mindppt.models import inspect_compression
from mindppt.models.amp import apply_amp
from mindppt.visualize import compression_figure

__all__ = ["list_images", "cfg_preprocess", "preprocess_images", "load_images", "Predictor", "top_k", "predict_files"]


def list_images(paths):
    """The image files among ``paths`` (files, or folders searched recursively for image extensions)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path, followlinks=True):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)
                          if not n.startswith(".") and n.lower().endswith(IMG_EXTENSIONS)]
        elif os.path.exists(path):
            files.append(path)
        else:
            raise DatasetError(f"image path does not exist: {path}")
    return files


def cfg_preprocess(cfg):
    """The ``preprocess`` of :func:`load_images` from a model's cfg (``model.default_cfg``, mean and std in
    pixel units 0-255): its evaluation preprocessing."""
    return {"image_size": cfg["input_size"][-1], "crop_pct": cfg["crop_pct"], "interpolation": cfg["interpolation"],
            "mean": list(cfg["mean"]), "std": list(cfg["std"])}


def preprocess_images(images, preprocess):
    """``(views, inputs)``: the centre crops (uint8 HWC, for drawing) and the model inputs (float32 CHW) of
    RGB uint8 HWC ``images`` (any iterable), by the evaluation transforms of ``preprocess`` (image_size, crop_pct,
    interpolation, mean, std in [0, 1] units)."""
    ops = create_transforms(False, image_size=preprocess["image_size"], crop_pct=preprocess["crop_pct"],
                            interpolation=preprocess["interpolation"], mean=preprocess["mean"],
                            std=preprocess["std"])
    crop, to_input = ops[:-2], ops[-2:]  # ToPIL, Resize, CenterCrop | Normalize, HWC2CHW
    views, inputs = [], []
    for image in images:
        for op in crop:
            image = op(image)
        view = np.asarray(image)
        x = view
        for op in to_input:
            x = op(x)
        views.append(view)
        inputs.append(np.asarray(x, np.float32))
    return views, inputs


def load_images(files, preprocess):
    """``(views, inputs, good_files)``: :func:`preprocess_images` of the readable ``files``, decoded one at a
    time. Unreadable files are skipped with a DatasetWarning each."""
    good = []

    def readable():
        for path in files:
            try:
                image = load_rgb(path)
            except Exception as e:  # PIL raises many types on bad data, as in the data pipeline
                warnings.warn(f"skipped {path}: cannot decode ({type(e).__name__}: {e})", DatasetWarning)
                continue
            good.append(path)
            yield image

    views, inputs = preprocess_images(readable(), preprocess)
    return views, inputs, good


def top_k(logits, class_names, k=5):
    """Per row of ``logits``: the ``k`` most probable classes as ``{"index", "name", "prob"}``."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"index": int(i), "name": class_names[i], "prob": float(p[i])} for i in row]
            for row, p in zip(order, probs)]


class Predictor:
    """A model with its input shape, preprocessing and class names: ``from_config(args)`` (the Cell at the
    evaluation threshold; ``trace_source`` to draw the tokens) or ``from_export(prefix)``."""

    def __init__(self, net, batch_size, preprocess, class_names, model=None):
        self.net, self.batch_size, self.preprocess, self.class_names = net, batch_size, preprocess, class_names
        self.model = model  # the Cell (None for an exported graph)

    @classmethod
    def from_config(cls, args, class_index=None, trace_source=False):
        if not args.ckpt_path:
            raise ConfigError("no weights: pass --ckpt_path (or --mindir PREFIX of tools/export.py)")
        setup(args, args.device_id)
        model = build_model(args, for_eval=True, trace_source=trace_source)
        model.set_train(False)
        names, _ = resolve_class_names(args.num_classes, class_index, args.data_dir, args.train_split)
        preprocess = {"image_size": args.image_resize, "crop_pct": args.crop_pct,
                      "interpolation": args.interpolation, "mean": args.mean, "std": args.std}
        return cls(apply_amp(model, args.val_amp_level), args.batch_size, preprocess, names, model)

    @classmethod
    def from_export(cls, prefix, class_index=None):
        info = read_export_info(prefix)
        path = prefix + EXPORT_FORMATS["MINDIR"]
        if info.get("file_format") != "MINDIR" or not os.path.isfile(path):
            raise ExportError(f"{prefix}.json describes {info.get('file')}, but tools/predict.py runs {path} (MINDIR)")
        graph = nn.GraphCell(ms.load(path))
        names = info["class_names"]
        if class_index:
            names, _ = resolve_class_names(info["num_classes"], class_index)
        return cls(graph, info["input_shape"][0], info["preprocess"], names)

    def logits(self, inputs):
        out = []
        for start in range(0, len(inputs), self.batch_size):
            batch = np.stack(inputs[start:start + self.batch_size])
            out.append(self.net(ms.Tensor(pad_batch(batch, self.batch_size))).asnumpy()[:len(batch)])
        return np.concatenate(out)


def predict_files(predictor, paths, k=5, show_tokens=None):
    """``[{"image": path, "top": [...]}]`` for the readable images of ``paths``; ``show_tokens``: write the
    token maps of each compression block there (needs a Cell built with ``trace_source``)."""
    views, inputs, files = load_images(list_images(paths), predictor.preprocess)
    if not files:
        raise DatasetError(f"no readable images in {', '.join(map(str, paths))}")
    logits = predictor.logits(inputs)
    if show_tokens:
        model = predictor.model
        _, infos = inspect_compression(model, np.stack(inputs))
        sheet = compression_figure(np.stack(views), infos, model.patch_embed.grid,
                                   titles=[os.path.basename(f) for f in files])
        with atomic_output(show_tokens, suffix=".png") as tmp:
            sheet.save(tmp)
    return [{"image": f, "top": t} for f, t in zip(files, top_k(logits, predictor.class_names, k))]
