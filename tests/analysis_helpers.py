"""The setup shared by the analysis and sweep tests: a random-weight PPT digits ViT (16 tokens, compression
in blocks 1, 2, 3) saved as a checkpoint, the tiny ImageFolder with 30 validation images, and a recipe."""
import os

import mindspore as ms
from tool_helpers import make_tiny_imagefolder, write_config

from mindppt.engine.cli import parse_cli as parse_args
from mindppt.models import create_model

MODEL = "vit_digits_patch4_16"
PPT = dict(r_tokens=3, pp_loc_list=[1, 2, 3])


def make_setup(root):
    """``(config path, checkpoint path)`` under ``root``."""
    data = make_tiny_imagefolder(os.path.join(root, "data"), train_per_class=1, val_per_class=10)
    ms.set_seed(0)
    model = create_model(MODEL, num_classes=3, **PPT)
    ckpt = os.path.join(root, "random.ckpt")
    ms.save_checkpoint(model, ckpt)
    config = write_config(os.path.join(root, "tiny.yaml"), data_dir=data, model=MODEL, threshold=None,
                          eval_threshold=None, **PPT)
    return config, ckpt


def eval_args(config, ckpt, *extra, tool="analyze"):
    """The parsed recipe as ``tool`` sees it, with the checkpoint to evaluate."""
    return parse_args(["-c", config, "--ckpt_path", ckpt, *extra], tool=tool)
