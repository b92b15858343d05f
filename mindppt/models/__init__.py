"""Models: registry, DeiT/ViT backbones, and the PPT compression cell."""
from .registry import create_model, list_models, register_model, is_model
from .ppt import TokenCompression, effective_r
from .vit import VisionTransformer, CompressionInspector, inspect_compression
from . import deit  # noqa: F401  (registers the constructors)

__all__ = ["create_model", "list_models", "register_model", "is_model", "TokenCompression",
           "effective_r", "VisionTransformer", "CompressionInspector", "inspect_compression"]
