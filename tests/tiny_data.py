"""A tiny generated ImageFolder shared by the training and reliability tests."""
import os

import numpy as np
from PIL import Image


def make_tiny_imagefolder(root, train_per_class=12, val_per_class=4, size=16, seed=0):
    """Three easy classes: bright top half, bright left half, bright main diagonal (plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = {"a_top": yy < size // 2, "b_left": xx < size // 2, "c_diag": np.abs(yy - xx) <= 2}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name, mask in masks.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                img = 40 + 170 * mask[..., None] + rng.integers(0, 40, (size, size, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                    os.path.join(root, split, name, f"{i:03d}.png"))
    return root
