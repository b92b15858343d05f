"""mindppt: PPT (Token Pruning and Pooling) for Vision Transformers in MindSpore."""

__version__ = "0.1.0"
