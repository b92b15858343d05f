"""``.npz`` weights: timm-named arrays, or the JAX/big_vision ViT layout renamed to timm's."""
import re
import zipfile
from typing import Iterable, Mapping

import numpy as np

from mindppt.errors import CheckpointError

from .common import StateDict

__all__ = ["read_npz", "jax_vit_to_timm"]


def _is_jax_vit(keys: Iterable[str]) -> bool:
    return any(re.search(r"(^|/)Transformer/encoderblock_\d+/", k) for k in keys) or any(
        k.endswith("embedding/kernel") for k in keys
    )


def jax_vit_to_timm(weights: Mapping[str, np.ndarray]) -> StateDict:
    """Rename and transpose a JAX/big_vision ViT parameter dict to timm's VisionTransformer layout.

    Layout (Flax): Dense kernels are (in, out) -> timm (out, in); the patch conv kernel is
    (kh, kw, in, out) -> (out, in, kh, kw); attention q/k/v kernels are (C, heads, head_dim) and are
    concatenated into timm's fused qkv (3C, C); the attention output kernel is (heads, head_dim, C).
    Keys that are not understood are kept under their original names, so the model check reports them
    as unexpected rather than dropping them silently.
    """
    w = dict(weights)
    prefix = ""
    for p in ("opt/target/", "params/"):
        if f"{p}embedding/kernel" in w:
            prefix = p
    rest = {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}
    rest.update({k: v for k, v in w.items() if not k.startswith(prefix)})
    out: StateDict = {}
    used = set()

    def take(key):
        used.add(key)
        return np.asarray(rest[key])

    def maybe(key, name, fn=lambda a: a):
        if key in rest:
            out[name] = np.ascontiguousarray(fn(take(key)))

    maybe("embedding/kernel", "patch_embed.proj.weight", lambda a: a.transpose(3, 2, 0, 1))
    maybe("embedding/bias", "patch_embed.proj.bias")
    maybe("cls", "cls_token")
    maybe("Transformer/posembed_input/pos_embedding", "pos_embed")
    maybe("Transformer/encoder_norm/scale", "norm.weight")
    maybe("Transformer/encoder_norm/bias", "norm.bias")
    maybe("head/kernel", "head.weight", lambda a: a.T)
    maybe("head/bias", "head.bias")
    maybe("pre_logits/kernel", "pre_logits.fc.weight", lambda a: a.T)
    maybe("pre_logits/bias", "pre_logits.fc.bias")

    blocks = sorted({int(m.group(1)) for k in rest for m in [re.match(r"Transformer/encoderblock_(\d+)/", k)] if m})
    for i in blocks:
        bp = f"Transformer/encoderblock_{i}/"
        sub = {k[len(bp):] for k in rest if k.startswith(bp)}

        def index_of(kind):
            return sorted({int(m.group(1)) for s in sub for m in [re.match(kind + r"_(\d+)/", s)] if m})

        ln, mha, mlp = index_of("LayerNorm"), index_of("MultiHeadDotProductAttention"), index_of("MlpBlock")
        t = f"blocks.{i}."
        if len(ln) == 2:  # classic ViT: LayerNorm_0 / LayerNorm_2; big_vision: LayerNorm_0 / LayerNorm_1
            for j, norm in zip(ln, ("norm1", "norm2")):
                maybe(f"{bp}LayerNorm_{j}/scale", t + f"{norm}.weight")
                maybe(f"{bp}LayerNorm_{j}/bias", t + f"{norm}.bias")
        if len(mha) == 1:
            ap = f"{bp}MultiHeadDotProductAttention_{mha[0]}/"
            qkv = [ap + f"{n}/kernel" for n in ("query", "key", "value")]
            if all(k in rest for k in qkv):
                # (C, H, D) -> (C, H*D) -> (H*D, C), stacked q, k, v
                out[t + "attn.qkv.weight"] = np.concatenate(
                    [take(k).reshape(take(k).shape[0], -1).T for k in qkv], axis=0
                )
            qkv_b = [ap + f"{n}/bias" for n in ("query", "key", "value")]
            if all(k in rest for k in qkv_b):
                out[t + "attn.qkv.bias"] = np.concatenate([take(k).reshape(-1) for k in qkv_b], axis=0)
            # (H, D, C) -> (H*D, C) -> (C, H*D)
            maybe(ap + "out/kernel", t + "attn.proj.weight", lambda a: a.reshape(-1, a.shape[-1]).T)
            maybe(ap + "out/bias", t + "attn.proj.bias")
        if len(mlp) == 1:
            mp = f"{bp}MlpBlock_{mlp[0]}/"
            for j, fc in ((0, "fc1"), (1, "fc2")):
                maybe(f"{mp}Dense_{j}/kernel", t + f"mlp.{fc}.weight", lambda a: a.T)
                maybe(f"{mp}Dense_{j}/bias", t + f"mlp.{fc}.bias")

    for k, v in rest.items():
        if k not in used:
            out[k] = np.asarray(v)
    return out


def read_npz(path: str) -> StateDict:
    path = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt (expected an .npz archive): {e}") from e
    if _is_jax_vit(arrays):
        return jax_vit_to_timm(arrays)
    return arrays
