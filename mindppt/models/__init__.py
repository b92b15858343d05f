"""Models: registry, DeiT/ViT backbones, and the PPT compression cell."""
from . import augreg, deit, lvvit  # noqa: F401  (register the constructors)
from .flops import count_params
from .ppt import TokenCompression, effective_r
from .registry import create_model, is_model, list_models, register_model
from .vit import CompressionInspector, VisionTransformer, inspect_compression

__all__ = ["create_model", "list_models", "register_model", "is_model", "count_params", "TokenCompression",
           "effective_r", "VisionTransformer", "CompressionInspector", "inspect_compression"]
