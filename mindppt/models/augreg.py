"""ViT (AugReg) in timm's naming: ``vit_{tiny,small,base}_patch16_224`` and ``ppt_`` variants.

The architecture is DeiT's (class token, learned position embedding, LayerNorm eps 1e-6, qkv bias); the
weights differ (ImageNet-21k pre-training, AugReg recipe; timm ``.safetensors`` or big_vision ``.npz``).

``default_cfgs``: timm 0.4.12's evaluation of these weights (``vit_*_patch16_224`` in
timm/models/vision_transformer.py): bicubic, ``crop_pct`` 0.9, mean and std 0.5 (127.5 in the registry's
pixel units).
"""
from .deit import DEIT_SIZES, build_vit, with_ppt_names
from .registry import INCEPTION_MEAN_255, INCEPTION_STD_255, make_cfg, register_model

_AUGREG_224 = make_cfg(image_size=224, interpolation="bicubic", crop_pct=0.9, mean=INCEPTION_MEAN_255,
                       std=INCEPTION_STD_255)
default_cfgs = with_ppt_names({f"vit_{size}_patch16_224": _AUGREG_224 for size in ("tiny", "small", "base")})


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
