"""Data pipeline: ImageFolder datasets, DeiT transforms, mixup/cutmix, and the digits demo data."""
from .dataset import ImageFolderIndex, RepeatAugSampler, create_dataset, create_loader, scan_image_folder
from .digits import write_digits_imagefolder
from .mixup import Mixup, smooth_one_hot
from .transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transforms, parse_rand_augment

__all__ = [
    "ImageFolderIndex", "RepeatAugSampler", "create_dataset", "create_loader",
    "scan_image_folder", "write_digits_imagefolder", "Mixup", "smooth_one_hot", "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD", "create_transforms", "parse_rand_augment",
]
