"""ViT (AugReg) in timm's naming: ``vit_{tiny,small,base}_patch16_224`` and ``ppt_`` variants.

The architecture is DeiT's (class token, learned position embedding, LayerNorm eps 1e-6, qkv bias); the
weights differ (ImageNet-21k pre-training, AugReg recipe; timm ``.safetensors`` or big_vision ``.npz``).
"""
from .deit import DEIT_SIZES, PPT_DEFAULTS
from .registry import register_model
from .vit import VisionTransformer


def _build(size, ppt, **kwargs):
    config = dict(img_size=224, patch_size=16, r_tokens=0, **DEIT_SIZES[size])
    if ppt:
        config.update(PPT_DEFAULTS)
    config.update(kwargs)
    return VisionTransformer(**config)


@register_model
def vit_tiny_patch16_224(**kwargs):
    return _build("tiny", False, **kwargs)


@register_model
def vit_small_patch16_224(**kwargs):
    return _build("small", False, **kwargs)


@register_model
def vit_base_patch16_224(**kwargs):
    return _build("base", False, **kwargs)


@register_model
def ppt_vit_tiny_patch16_224(**kwargs):
    return _build("tiny", True, **kwargs)


@register_model
def ppt_vit_small_patch16_224(**kwargs):
    return _build("small", True, **kwargs)


@register_model
def ppt_vit_base_patch16_224(**kwargs):
    return _build("base", True, **kwargs)
