"""Models: registry (constructors and their preprocessing), DeiT/ViT backbones, the PPT compression cell,
and the recognition of a checkpoint's architecture."""
from . import augreg, deit, lvvit  # noqa: F401  (register the constructors)
from .flops import count_params
from .ppt import TokenCompression, effective_r
from .recognize import infer_model_name
from .registry import (
    create_model,
    eval_preprocessing,
    get_pretrained_cfg,
    is_model,
    list_models,
    model_entrypoint,
    register_model,
)
from .vit import CompressionInspector, VisionTransformer, inspect_compression

__all__ = ["create_model", "list_models", "register_model", "is_model", "model_entrypoint", "get_pretrained_cfg",
           "eval_preprocessing", "infer_model_name", "count_params", "TokenCompression", "effective_r",
           "VisionTransformer", "CompressionInspector", "inspect_compression"]
