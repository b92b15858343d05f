"""The setup shared by the export, predict and README-API tests: a random-weight PPT digits ViT (blocks 1 and
2 remove 4 of 17 tokens) with sharpened attention saved as a checkpoint, the tiny ImageFolder, a recipe, and
a threshold that splits a batch of random images between pooling and pruning in the first compression block."""
import os

import mindspore as ms
import numpy as np
from model_helpers import random_images, sharpen_attention
from tool_helpers import make_tiny_imagefolder, write_config

from mindppt.models import create_model, fused_cpu, inspect_compression

MODEL = "vit_digits_patch4_16"
PPT = dict(r_tokens=4, pp_loc_list=[1, 2])
BATCH = 8
SIZE = 16
EXPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "export.py")
PREDICT = os.path.join(os.path.dirname(EXPORT), "predict.py")


def portable_model(threshold=0.0):
    """The test model with MindSpore's own ops (what tools/export.py builds), random sharpened weights."""
    ms.set_seed(0)
    with fused_cpu.disabled():
        model = create_model(MODEL, num_classes=3, img_size=SIZE, threshold=threshold, **PPT)
    model.set_train(False)
    return sharpen_attention(model, factor=6.0)


def make_setup(root):
    """``dict(config, ckpt, data, images, threshold)`` under ``root``; ``threshold`` lies between the 4th
    and 5th first-block variance of ``images`` (geometric mean, far from both)."""
    data = make_tiny_imagefolder(os.path.join(root, "data"), train_per_class=1, val_per_class=2)
    model = portable_model()
    ckpt = os.path.join(root, "random.ckpt")
    ms.save_checkpoint(model, ckpt)
    images = random_images(BATCH, seed=3, size=SIZE)
    _, blocks = inspect_compression(model, images)
    v = np.sort(blocks[0]["variance"])
    config = write_config(os.path.join(root, "tiny.yaml"), data_dir=data, model=MODEL, threshold=None,
                          eval_threshold=None, **PPT)
    return dict(config=config, ckpt=ckpt, data=data, images=images, threshold=float(np.sqrt(v[3] * v[4])))
