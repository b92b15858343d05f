"""Registered DeiT variants: dense ``deit_*`` and PPT ``ppt_deit_*`` (paper defaults), distilled DeiT
(``deit_*_distilled_patch16_224``: class and distillation tokens, two heads averaged), DeiT-B at 384 px,
plus the small ViTs of the digits demo. Any PPT keyword works on either name (``r_tokens=0`` is dense).

``default_cfgs``: each model's preprocessing (:mod:`.registry`; mean and std in pixel units 0-255). DeiT's
is the official DeiT evaluation (facebookresearch/deit ``build_transform``: bicubic resize of the short side
to ``224 / 0.875 = 256``, centre crop 224, ImageNet mean and std). At 384 px the crop is timm's
(``deit_base_patch16_384``: ``crop_pct`` 1.0); DeiT's own script keeps 0.875 at every size. The digits
ViTs take the demo's pipeline (configs/demo_digits.yaml: 16 px, bilinear, no crop margin, mean and std
0.5).
"""
from .registry import IMAGENET_MEAN_255, IMAGENET_STD_255, make_cfg, register_model
from .vit import VisionTransformer

PPT_DEFAULTS = dict(r_tokens=50, pp_loc_list=(3, 6, 9), threshold=7e-5, prop_attn=True)
DEIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}

DISTILLED_CLASSIFIER = ("head", "head_dist")


def _cfg(**kwargs):
    """DeiT's evaluation preprocessing; ``kwargs`` override it."""
    cfg = dict(image_size=224, interpolation="bicubic", crop_pct=0.875, mean=IMAGENET_MEAN_255,
               std=IMAGENET_STD_255)
    cfg.update(kwargs)
    return make_cfg(**cfg)


def with_ppt_names(cfgs):
    """``cfgs`` plus the same cfg under each ``ppt_`` name: PPT changes no preprocessing."""
    return dict(cfgs, **{f"ppt_{name}": cfg for name, cfg in cfgs.items()})


# The digits demo's pipeline (configs/demo_digits.yaml, mindppt/data/digits.py): 16 px scans, bilinear,
# no crop margin, mean and std 0.5.
DIGITS_CFG = make_cfg(image_size=16, interpolation="bilinear", crop_pct=1.0, mean=(127.5,) * 3, std=(127.5,) * 3,
                      num_classes=10)

default_cfgs = with_ppt_names({
    "deit_tiny_patch16_224": _cfg(),
    "deit_small_patch16_224": _cfg(),
    "deit_base_patch16_224": _cfg(),
    "deit_tiny_distilled_patch16_224": _cfg(classifier=DISTILLED_CLASSIFIER),
    "deit_small_distilled_patch16_224": _cfg(classifier=DISTILLED_CLASSIFIER),
    "deit_base_distilled_patch16_224": _cfg(classifier=DISTILLED_CLASSIFIER),
    "deit_base_patch16_384": _cfg(image_size=384, crop_pct=1.0),
    "vit_digits_patch4_16": DIGITS_CFG,
})


def build_vit(arch, ppt, **kwargs):
    """A VisionTransformer of ``arch`` (224 px, patch 16 unless ``arch`` says otherwise), dense or with the
    PPT defaults; ``kwargs`` override both."""
    config = dict(patch_size=16, img_size=224, r_tokens=0)
    config.update(arch)
    if ppt:
        config.update(PPT_DEFAULTS)
    config.update(kwargs)
    return VisionTransformer(**config)


@register_model
def deit_tiny_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["tiny"], False, **kwargs)


@register_model
def deit_small_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["small"], False, **kwargs)


@register_model
def deit_base_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["base"], False, **kwargs)


@register_model
def ppt_deit_tiny_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["tiny"], True, **kwargs)


@register_model
def ppt_deit_small_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["small"], True, **kwargs)


@register_model
def ppt_deit_base_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["base"], True, **kwargs)


@register_model
def deit_tiny_distilled_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["tiny"], False, distilled=True, **kwargs)


@register_model
def deit_small_distilled_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["small"], False, distilled=True, **kwargs)


@register_model
def deit_base_distilled_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["base"], False, distilled=True, **kwargs)


@register_model
def ppt_deit_tiny_distilled_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["tiny"], True, distilled=True, **kwargs)


@register_model
def ppt_deit_small_distilled_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["small"], True, distilled=True, **kwargs)


@register_model
def ppt_deit_base_distilled_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["base"], True, distilled=True, **kwargs)


@register_model
def deit_base_patch16_384(**kwargs):
    """DeiT-B fine-tuned at 384 px: 577 tokens."""
    return build_vit(dict(DEIT_SIZES["base"], img_size=384), False, **kwargs)


@register_model
def ppt_deit_base_patch16_384(**kwargs):
    """DeiT-B at 384 px with PPT (577 -> 527 -> 477 -> 427 tokens with the default r=50 at blocks 3, 6, 9)."""
    return build_vit(dict(DEIT_SIZES["base"], img_size=384), True, **kwargs)


# 16x16 input: each of the 16 patches covers 2x2 pixels of the 8x8 scans.
DIGITS_ARCH = dict(img_size=16, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
                   pp_loc_list=(1, 2, 3))
# 17 -> 14 -> 11 -> 8 tokens (0.69x the dense GMACs); threshold as the demo evaluates.
DIGITS_PPT = dict(r_tokens=3, threshold=4e-3, prop_attn=True)


@register_model
def vit_digits_patch4_16(**kwargs):
    """Small ViT for 16x16 images (the built-in digits demo)."""
    return build_vit(DIGITS_ARCH, False, **kwargs)


@register_model
def ppt_vit_digits_patch4_16(**kwargs):
    """The digits ViT with PPT compression."""
    config = dict(DIGITS_PPT)
    config.update(kwargs)
    return build_vit(DIGITS_ARCH, False, **config)
