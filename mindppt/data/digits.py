"""Write scikit-learn's handwritten digits as an ImageFolder tree (real data for the demo, no download).

``load_digits`` ships with scikit-learn: 1797 8x8 grayscale digits (values 0..16), 10 classes. They are
split once with a stratified ``train_test_split`` and written as RGB PNGs, upscaled with PIL bicubic:

    out_dir/train/<digit>/<index>.png     out_dir/val/<digit>/<index>.png

``<index>`` is the row in ``load_digits()``, so every file can be traced back to the original sample.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mindppt.errors import DatasetError
from mindppt.io import atomic_write

MARKER = ".digits_complete.json"
_SPLITS = ("train", "val")


def _count_pngs(split_dir: str) -> Dict[str, int]:
    counts = {}
    if os.path.isdir(split_dir):
        for name in sorted(os.listdir(split_dir)):
            class_dir = os.path.join(split_dir, name)
            if os.path.isdir(class_dir):
                counts[name] = sum(1 for f in os.listdir(class_dir) if f.endswith(".png"))
    return counts


def _read_marker(out_dir: str):
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_marker(out_dir: str, content: dict) -> None:
    atomic_write(os.path.join(out_dir, MARKER), json.dumps(content, indent=1, sort_keys=True))


def write_digits_imagefolder(out_dir: str, *, image_size: int = 32, val_fraction: float = 0.25,
                             seed: int = 0) -> Dict[str, int]:
    """Write (or reuse) the digits ImageFolder tree; return ``{"train": n, "val": n}``.

    Idempotent: if ``out_dir/.digits_complete.json`` records the same arguments and the PNG counts on
    disk match it, nothing is written. If the marker records other arguments, the train/val folders
    (which this function wrote) are replaced. If train/val folders exist without a marker, DatasetError
    is raised rather than overwriting data this function did not write.
    Files are written to a temporary folder inside ``out_dir`` and moved into place; the marker says
    "complete" only after that, so an interrupted run is redone on the next call. Not safe to call from several
    processes on the same ``out_dir`` at once (let rank 0 write it).
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out_dir = os.fspath(out_dir)
    params = {"image_size": image_size, "val_fraction": val_fraction, "seed": seed}

    marker = _read_marker(out_dir)
    if marker is not None and marker.get("complete") and marker.get("params") == params:
        on_disk = {s: _count_pngs(os.path.join(out_dir, s)) for s in _SPLITS}
        if on_disk == marker.get("per_class"):
            return dict(marker["counts"])
    existing = [s for s in _SPLITS if os.path.exists(os.path.join(out_dir, s))]
    if existing and marker is None:
        raise DatasetError(f"{out_dir} already has {existing} folders not written by write_digits_imagefolder "
                           f"(no {MARKER}); refusing to overwrite them -- use another out_dir")

    digits = load_digits()
    images, targets = digits.images, digits.target  # (1797, 8, 8) float in 0..16, (1797,) int
    ids = np.arange(len(targets))
    train_ids, val_ids = train_test_split(ids, test_size=val_fraction, stratify=targets, random_state=seed)

    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-tmp-", dir=out_dir)
    try:
        for split, split_ids in (("train", train_ids), ("val", val_ids)):
            for i in sorted(split_ids.tolist()):
                class_dir = os.path.join(tmp, split, str(int(targets[i])))
                os.makedirs(class_dir, exist_ok=True)
                pixels = np.round(images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(pixels).resize((image_size, image_size), Image.BICUBIC)
                img.convert("RGB").save(os.path.join(class_dir, f"{i:04d}.png"))
        # The tree is about to change: mark it ours but incomplete until the final marker is written.
        _write_marker(out_dir, {"params": params, "complete": False})
        for split in _SPLITS:
            target = os.path.join(out_dir, split)
            if os.path.exists(target):
                shutil.rmtree(target)
            os.replace(os.path.join(tmp, split), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    counts = {"train": int(len(train_ids)), "val": int(len(val_ids))}
    per_class = {s: _count_pngs(os.path.join(out_dir, s)) for s in _SPLITS}
    _write_marker(out_dir, {"params": params, "complete": True, "counts": counts, "per_class": per_class})
    return counts
