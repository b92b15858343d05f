"""Which registered model a checkpoint's tensors fit, from their names and shapes alone (no model built).

Recognised: DeiT tiny/small/base from the embedding width (192/384/768) and depth 12; distilled DeiT
(``deit_*_distilled_patch16_224``) from a distillation token; DeiT-B at 384 px (``deit_base_patch16_384``)
from 577 position embeddings; LV-ViT-S (``lvvit_s``) from its convolutional stem and ``aux_head`` (width 384,
depth 16). ViT AugReg weights have DeiT's shapes and are recognised as DeiT (:func:`same_shape_models`
names the AugReg model of the same shapes).
"""
from mindppt.errors import CheckpointError

from .deit import DEIT_SIZES
from .registry import is_model

__all__ = ["infer_model_name", "same_shape_models", "suggest_model"]

_DEIT_SIZES = {arch["embed_dim"]: size for size, arch in DEIT_SIZES.items()}
# LV-ViT's convolutional stem: the official names (conv1, bn1, ...), or a Sequential stem's (conv.0, ...)
_LVVIT_STEM_KEYS = ("patch_embed.conv1.weight", "patch_embed.conv.0.weight")
_NAME_IT = "name the model explicitly (--model)"


def _embed_dim(state):
    if "cls_token" in state:
        return int(state["cls_token"].shape[-1])
    if "patch_embed.proj.weight" in state:
        return int(state["patch_embed.proj.weight"].shape[0])
    raise CheckpointError(f"cannot infer the model (no cls_token or patch_embed.proj.weight); {_NAME_IT}")


def infer_model_name(state):
    """``(name, why)``: the registered model whose architecture ``state`` (tensor name -> array, timm's
    names) fits, and the evidence in words. CheckpointError when no registered architecture fits."""
    dim = _embed_dim(state)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.count(".") >= 2})
    pos_embed = state.get("pos_embed")
    positions = int(pos_embed.shape[1]) if pos_embed is not None and pos_embed.ndim == 3 else None
    distilled = "dist_token" in state
    if "aux_head.weight" in state and any(k in state for k in _LVVIT_STEM_KEYS):
        if dim == 384 and depth == 16:
            return "lvvit_s", "LV-ViT stem and aux_head, embed dim 384, depth 16"
        raise CheckpointError(f"cannot infer the model from an LV-ViT checkpoint of embed dim {dim} and depth "
                              f"{depth} (known: lvvit_s, embed dim 384, depth 16); {_NAME_IT}")
    size = _DEIT_SIZES.get(dim)
    if size is not None and depth == 12:
        why = f"embed dim {dim}, depth {depth}"
        if distilled and positions in (None, 198):
            return f"deit_{size}_distilled_patch16_224", f"a distillation token, {why}"
        if not distilled and positions in (None, 197):
            return f"deit_{size}_patch16_224", why
        if not distilled and positions == 577 and size == "base":
            return "deit_base_patch16_384", f"{why}, 577 position embeddings (384 px)"
    found = f"embed dim {dim}, depth {depth}, {positions} position embeddings" + \
        (", a distillation token" if distilled else "")
    raise CheckpointError(f"cannot infer the model from {found} (known: DeiT tiny/small/base, embed dims "
                          f"192/384/768, depth 12, 197 positions at 224 px, 198 with a distillation token, 577 for "
                          f"DeiT-B at 384 px; LV-ViT-S); {_NAME_IT}")


def same_shape_models(name):
    """Other registered models whose weights have exactly the shapes of ``name``'s: the ViT AugReg model
    of a DeiT (``deit_small_patch16_224`` -> ``["vit_small_patch16_224"]``)."""
    twin = name.replace("deit_", "vit_", 1)
    return [twin] if twin != name and is_model(twin) else []


def suggest_model(state, model_name):
    """``"; the checkpoint looks like X (why): pass --model X"`` when ``state`` fits another model than
    ``model_name`` (the ``ppt_`` variant when ``model_name`` is one), else ``""``: for a mismatch error."""
    try:
        name, why = infer_model_name(state)
    except CheckpointError:
        return ""
    if model_name.startswith("ppt_") and is_model(f"ppt_{name}"):
        name = f"ppt_{name}"
    if name == model_name:
        return ""
    return f"; the checkpoint looks like {name} ({why}): pass --model {name}"
