"""DeiT-style image transforms built from ``mindspore.dataset.vision`` ops.

``create_transforms`` returns a list of operations for ``dataset.map(operations=..., input_columns="image")``.
Input: an RGB ``uint8`` HWC numpy image (what :func:`mindppt.data.create_dataset` yields).
Output: a normalised ``float32`` CHW image.

The list starts with ``ToPIL`` so that the resize-type ops (``Resize``, ``RandomResizedCrop``,
``CenterCrop``, flips, colour jitter) run MindSpore's PIL implementations, which give the same pixels
as timm/torchvision (PIL bicubic with antialiasing). The OpenCV implementations that MindSpore uses for
numpy input do not antialias when downscaling, which changes the accuracy of converted timm
checkpoints. ``RandAugment`` and ``Normalize`` convert to numpy and run in C++. See ``TRANSFORMS.md``
for every place where the result still differs from timm.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from mindspore.dataset import vision
from mindspore.dataset.vision import Inter

# in pixel units (0-255), as mindcv's constants and its mean/std options
IMAGENET_DEFAULT_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_DEFAULT_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

_INTERPOLATIONS = {
    "bicubic": Inter.BICUBIC,
    "bilinear": Inter.BILINEAR,
    "nearest": Inter.NEAREST,
}

# timm's RandAugment magnitudes live on a 0..10 scale (_LEVEL_DENOM = 10). MindSpore's RandAugment
# indexes `magnitude` into `num_magnitude_bins` evenly spaced values from 0 to the op's maximum, so
# 11 bins make MindSpore's `magnitude=9` mean 9/10 of the maximum, like timm's `m9`.
_RAND_AUGMENT_BINS = 11
_RAND_AUGMENT_MAX_MAGNITUDE = _RAND_AUGMENT_BINS - 1

def _warn(message: str) -> None:
    # Python's default warning filter already shows a given warning once per calling location.
    warnings.warn(message, UserWarning, stacklevel=3)


def _is_off(value) -> bool:
    """True for the values that switch an augmentation off: None, False, 0, "", "none"."""
    if value is None or value is False:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("", "none", "off", "false", "0")
    if isinstance(value, numbers.Number):
        return float(value) == 0.0
    return False


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm-style ``rand-...`` string (only the parts MindSpore can honour are used)."""

    num_ops: int = 2
    magnitude: int = 9
    magnitude_std: float = 0.0  # parsed but not applied: MindSpore's magnitude is fixed per op instance
    increasing: bool = False  # MindSpore's op set already behaves like timm's "inc1" variants


def parse_rand_augment(spec: Optional[str]) -> Optional[RandAugmentSpec]:
    """Parse a timm RandAugment string such as ``"rand-m9-mstd0.5-inc1"``.

    Returns None when augmentation is switched off (None, "", "none"). Keys: ``m`` (int 0..10),
    ``n`` (number of ops, int >= 0), ``mstd`` (float >= 0), ``inc`` (0 or 1). Any other policy name or
    key raises ValueError, so a typo never silently trains without augmentation.
    """
    if _is_off(spec):
        return None
    if not isinstance(spec, str):
        raise ValueError(f"auto_augment must be a string like 'rand-m9-mstd0.5-inc1' or 'none', got {spec!r}")
    parts = spec.strip().split("-")
    if parts[0] != "rand":
        raise ValueError(
            f"unsupported auto_augment policy {spec!r}: only timm-style 'rand-...' (MindSpore RandAugment) "
            "or 'none' are supported")
    fields = {"num_ops": 2, "magnitude": 9, "magnitude_std": 0.0, "increasing": False}
    for part in parts[1:]:
        if not part:
            continue
        try:
            if part.startswith("mstd"):
                fields["magnitude_std"] = float(part[4:])
            elif part.startswith("inc"):
                fields["increasing"] = bool(int(part[3:]))
            elif part.startswith("m"):
                fields["magnitude"] = int(part[1:])
            elif part.startswith("n"):
                fields["num_ops"] = int(part[1:])
            else:
                raise ValueError(f"unknown key {part!r}")
        except ValueError as err:
            raise ValueError(f"cannot parse auto_augment {spec!r} at {part!r}: {err}") from None
    if not 0 <= fields["magnitude"] <= _RAND_AUGMENT_MAX_MAGNITUDE:
        raise ValueError(f"auto_augment {spec!r}: magnitude must be an integer in 0..10")
    if fields["num_ops"] < 0 or fields["magnitude_std"] < 0:
        raise ValueError(f"auto_augment {spec!r}: n and mstd must be >= 0")
    return RandAugmentSpec(**fields)


def _interpolation(name: str) -> Inter:
    try:
        return _INTERPOLATIONS[str(name).lower()]
    except KeyError:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {name!r}") from None


def _jitter_ranges(color_jitter) -> dict:
    """timm semantics: a scalar c means brightness = contrast = saturation = c and no hue jitter."""
    if isinstance(color_jitter, numbers.Number):
        values = (float(color_jitter),) * 3
    else:
        values = tuple(float(c) for c in color_jitter)
        if len(values) not in (3, 4):
            raise ValueError(f"color_jitter must be a number or 3/4 numbers, got {color_jitter!r}")
    if any(v < 0 for v in values):
        raise ValueError(f"color_jitter values must be >= 0, got {color_jitter!r}")
    ranges = {name: (max(0.0, 1.0 - v), 1.0 + v)
              for name, v in zip(("brightness", "contrast", "saturation"), values[:3])}
    if len(values) == 4:
        if values[3] > 0.5:
            raise ValueError(f"hue jitter must be <= 0.5, got {values[3]}")
        ranges["hue"] = (-values[3], values[3])
    return ranges


def _normalize(mean: Sequence[float], std: Sequence[float]):
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}")
    return vision.Normalize(mean=list(mean), std=list(std))  # pixel units, as MindSpore's Normalize


def create_transforms(
    is_training: bool,
    *,
    image_size: int = 224,
    interpolation: str = "bicubic",
    scale: Optional[Tuple[float, float]] = (0.08, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    vflip: float = 0.0,
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
    color_jitter: Union[float, Sequence[float], None] = 0.4,
    re_prob: float = 0.25,
    re_scale: Tuple[float, float] = (0.02, 1 / 3),
    re_ratio: Tuple[float, float] = (0.3, 3.3),
    re_value="random",
    re_max_attempts: int = 10,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_pct: float = 0.875,
) -> list:
    """Build the DeiT train or eval transform list (ops for the "image" column).

    Train: RandomResizedCrop(image_size, scale, ratio) -> RandomHorizontalFlip(hflip) ->
    RandAugment(auto_augment) *or*, only when auto_augment is off, colour jitter -> Normalize ->
    HWC2CHW -> RandomErasing(re_prob, per-pixel normal noise).
    Switches: ``scale=None`` replaces the random crop by Resize(image_size) + CenterCrop(image_size);
    ``hflip=0``, ``auto_augment="none"``, ``color_jitter=0`` and ``re_prob=0`` drop their op.

    Eval: Resize(int(image_size / crop_pct)) -> CenterCrop(image_size) -> Normalize -> HWC2CHW
    (``crop_pct=1`` resizes straight to image_size on the shorter side, then crops the centre).
    The training-only arguments are ignored for eval.
    """
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    inter = _interpolation(interpolation)
    ops = [vision.ToPIL()]  # run the geometric ops with PIL, like timm (see module docstring)
    if not is_training:
        if crop_pct is None or not 0 < float(crop_pct) <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
        scale_size = int(image_size / float(crop_pct))
        ops += [vision.Resize(scale_size, inter), vision.CenterCrop(image_size)]
        return ops + [_normalize(mean, std), vision.HWC2CHW()]

    if _is_off(scale):
        ops += [vision.Resize(image_size, inter), vision.CenterCrop(image_size)]
    else:
        scale, ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                             f"got scale={scale}, ratio={ratio}")
        ops.append(vision.RandomResizedCrop(image_size, scale=scale, ratio=ratio, interpolation=inter))
    if not _is_off(hflip):
        if not 0 < float(hflip) <= 1:
            raise ValueError(f"hflip must be a probability, got {hflip!r}")
        ops.append(vision.RandomHorizontalFlip(float(hflip)))
    if not _is_off(vflip):
        if not 0 < float(vflip) <= 1:
            raise ValueError(f"vflip must be a probability, got {vflip!r}")
        ops.append(vision.RandomVerticalFlip(float(vflip)))

    rand_aug = parse_rand_augment(auto_augment)
    if rand_aug is not None:
        if rand_aug.magnitude_std > 0:
            _warn(f"auto_augment {auto_augment!r}: mstd={rand_aug.magnitude_std} is ignored; "
                       "MindSpore's RandAugment applies a fixed magnitude (see mindppt/data/TRANSFORMS.md)")
        if not rand_aug.increasing:
            _warn(f"auto_augment {auto_augment!r}: MindSpore's RandAugment always uses the "
                       "'increasing' op variants (timm inc1); inc0 cannot be reproduced")
        if rand_aug.num_ops > 0:
            fill = tuple(int(round(m)) for m in mean)  # timm fills with the mean pixel
            ops.append(vision.RandAugment(num_ops=rand_aug.num_ops, magnitude=rand_aug.magnitude,
                                          num_magnitude_bins=_RAND_AUGMENT_BINS,
                                          interpolation=inter, fill_value=fill))
    elif not _is_off(color_jitter):
        ops.append(vision.RandomColorAdjust(**_jitter_ranges(color_jitter)))

    ops += [_normalize(mean, std), vision.HWC2CHW()]
    if not _is_off(re_prob):
        if not 0 < float(re_prob) <= 1:
            raise ValueError(f"re_prob must be a probability, got {re_prob!r}")
        # defaults as timm's: scale (0.02, 1/3), aspect ratio (0.3, 3.3), "random" = per-pixel N(0, 1) noise
        value = re_value if isinstance(re_value, str) else (
            tuple(int(v) for v in re_value) if isinstance(re_value, (list, tuple)) else int(re_value))
        ops.append(vision.RandomErasing(prob=float(re_prob), scale=tuple(re_scale), ratio=tuple(re_ratio),
                                        value=value, max_attempts=int(re_max_attempts)))
    return ops
