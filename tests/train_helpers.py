"""Helpers shared by the training, distributed and reliability tests: a tiny generated ImageFolder
and checkpoint comparison."""
import os

import numpy as np
import mindspore as ms
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


def ckpt_arrays(path):
    """Every tensor of a MindSpore checkpoint as a numpy array."""
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items() if hasattr(v, "asnumpy")}


def assert_same_state(path_a, path_b, rtol=1e-5, atol=1e-6):
    a, b = ckpt_arrays(path_a), ckpt_arrays(path_b)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)
