"""Data pipeline: ImageFolder datasets, DeiT transforms, mixup/cutmix. The digits demo data is
:mod:`mindppt.data.digits`, not imported here: it needs scikit-learn, whose import (about 1.3 s) every
tool would otherwise pay at start-up."""
from .dataset import ImageFolderIndex, RepeatAugSampler, create_dataset, create_loader, scan_image_folder
from .mixup import Mixup, smooth_one_hot
from .transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transforms, parse_rand_augment

__all__ = [
    "ImageFolderIndex", "RepeatAugSampler", "create_dataset", "create_loader",
    "scan_image_folder", "Mixup", "smooth_one_hot", "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD", "create_transforms", "parse_rand_augment",
]
