"""ViT (AugReg) in timm's naming: ``vit_{tiny,small,base}_patch16_224`` and ``ppt_`` variants.

The architecture is DeiT's (class token, learned position embedding, LayerNorm eps 1e-6, qkv bias); the
weights differ (ImageNet-21k pre-training, AugReg recipe; timm ``.safetensors`` or big_vision ``.npz``).
"""
from .deit import DEIT_SIZES, build_vit
from .registry import register_model


@register_model
def vit_tiny_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["tiny"], False, **kwargs)


@register_model
def vit_small_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["small"], False, **kwargs)


@register_model
def vit_base_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["base"], False, **kwargs)


@register_model
def ppt_vit_tiny_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["tiny"], True, **kwargs)


@register_model
def ppt_vit_small_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["small"], True, **kwargs)


@register_model
def ppt_vit_base_patch16_224(**kwargs):
    return build_vit(DEIT_SIZES["base"], True, **kwargs)
