"""Independent float64 NumPy reference of LV-ViT (TokenLabeling's ``lvvit_s`` architecture) with PPT.

Written from the official architecture (zihangJiang/TokenLabeling, ``LV_ViT`` with ``p_emb='4_2'``), not
from mindppt: a convolutional stem (conv 7x7 stride 2 pad 3, conv 3x3, conv 3x3, 64 channels, no bias,
each followed by BatchNorm in evaluation form and ReLU; then a conv of kernel = stride = patch_size / 2
with bias), class token and position embedding, pre-norm blocks whose two residual branches are divided
by ``skip_lam`` (2), LayerNorm eps 1e-5 (torch's default), qkv without bias, and at inference
``head(x_cls) + 0.5 * max over the other tokens of aux_head(x_token)``.

The transformer pieces and PPT's compression come from tests/ppt_reference.py (attention, MLP with the
exact GELU, LayerNorm, compress). Everything runs in float64, one image at a time. Parameters use the
official checkpoint's names (torch layout, BatchNorm ``weight/bias/running_mean/running_var``).
"""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from ppt_reference import attention, compress, dense, layer_norm, mlp

LN_EPS = 1e-5  # torch nn.LayerNorm default
BN_EPS = 1e-5  # torch nn.BatchNorm2d default
SKIP_LAM = 2.0
AUX_WEIGHT = 0.5
STEM_CHANNELS = 64

LVVIT_S = dict(embed_dim=384, depth=16, num_heads=6)


def _p(params, name):
    return np.asarray(params[name], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# The convolutional stem, for ONE image
# --------------------------------------------------------------------------------------------

def conv2d(x, weight, stride=1, padding=0, bias=None):
    """Cross-correlation of one image (C_in, H, W) with ``weight`` (C_out, C_in, k, k), zero padding, by
    im2col: every k x k window as a row, one matrix product."""
    c_out, c_in, k, _ = weight.shape
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # (C_in, Ho, Wo, k, k)
    _, ho, wo, _, _ = windows.shape
    cols = windows.transpose(1, 2, 0, 3, 4).reshape(ho * wo, c_in * k * k)  # (c_in, kh, kw) order
    out = cols @ weight.reshape(c_out, -1).T
    if bias is not None:
        out = out + bias
    return out.T.reshape(c_out, ho, wo)


def batch_norm(x, params, prefix):
    """BatchNorm2d in evaluation form on (C, H, W): running statistics, affine."""
    mean = _p(params, prefix + "running_mean")[:, None, None]
    var = _p(params, prefix + "running_var")[:, None, None]
    return (x - mean) / np.sqrt(var + BN_EPS) * _p(params, prefix + "weight")[:, None, None] \
        + _p(params, prefix + "bias")[:, None, None]


def conv_stem(params, image, patch_size=16):
    """LV-ViT's '4_2' patch embedding of one image (3, H, W) -> (num_patches, C), row-major grid order."""
    x = np.asarray(image, np.float64)
    for i, (stride, padding) in enumerate(((2, 3), (1, 1), (1, 1)), start=1):
        x = conv2d(x, _p(params, f"patch_embed.conv{i}.weight"), stride, padding)
        x = np.maximum(batch_norm(x, params, f"patch_embed.bn{i}."), 0.0)
    p = patch_size // 2
    x = conv2d(x, _p(params, "patch_embed.proj.weight"), p, 0, _p(params, "patch_embed.proj.bias"))
    return x.reshape(x.shape[0], -1).T


def embed_images(params, images, patch_size=16):
    """Stem output of every image (B, num_patches, C): independent of PPT, computed once per test."""
    return np.stack([conv_stem(params, image, patch_size) for image in np.asarray(images, np.float64)])


# --------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------

def _depth(params):
    depth = 0
    while f"blocks.{depth}.norm1.weight" in params:
        depth += 1
    return depth


def _with_zero_qkv_bias(params, depth):
    """LV-ViT's qkv has no bias; ppt_reference.attention adds one, so give it zeros (adding 0.0 is exact)."""
    params = dict(params)
    for i in range(depth):
        weight = params[f"blocks.{i}.attn.qkv.weight"]
        params.setdefault(f"blocks.{i}.attn.qkv.bias", np.zeros(weight.shape[0]))
    return params


def forward_tokens_one(params, tokens, *, num_heads, r_list, pp_loc_list, threshold, prop_attn=True):
    """From the stem's tokens (N0 - 1, C) of one image to (logits, per-block infos)."""
    depth = _depth(params)
    params = _with_zero_qkv_bias(params, depth)
    cls = _p(params, "cls_token").reshape(1, -1)
    x = np.concatenate([cls, tokens], axis=0) + _p(params, "pos_embed")[0]
    n0 = x.shape[0]
    size = np.ones(n0)
    source = np.eye(n0, dtype=np.int64)
    infos = []
    for i in range(depth):
        prefix = f"blocks.{i}."
        h = layer_norm(x, _p(params, prefix + "norm1.weight"), _p(params, prefix + "norm1.bias"), LN_EPS)
        out, attn, k, v = attention(params, prefix, h, size, num_heads, prop_attn)
        x = x + out / SKIP_LAM
        if i in pp_loc_list:
            x, size, source, info = compress(x, size, source, attn, k, v, r_list[i], threshold)
            info["block"] = i
            infos.append(info)
        h = layer_norm(x, _p(params, prefix + "norm2.weight"), _p(params, prefix + "norm2.bias"), LN_EPS)
        x = x + mlp(params, prefix, h) / SKIP_LAM
    x = layer_norm(x, _p(params, "norm.weight"), _p(params, "norm.bias"), LN_EPS)
    cls_logits = dense(x[0], _p(params, "head.weight"), _p(params, "head.bias"))
    aux_logits = dense(x[1:], _p(params, "aux_head.weight"), _p(params, "aux_head.bias"))
    return cls_logits + AUX_WEIGHT * aux_logits.max(axis=0), infos


def _batch_infos(per_image):
    """Per-image info dicts -> one dict per block with arrays over images (ppt_reference's format); an
    int that every image shares (e.g. a token count) stays an int."""
    batched = []
    for j in range(len(per_image[0])):
        items = [infos[j] for infos in per_image]
        entry = {}
        for key in items[0]:
            values = [item[key] for item in items]
            same_int = all(isinstance(v, int) and not isinstance(v, bool) and v == values[0] for v in values)
            entry[key] = values[0] if key == "block" or same_int else np.stack([np.asarray(v) for v in values])
        entry["pool"] = entry["pool"].astype(bool)
        batched.append(entry)
    return batched


def reference_forward(params, images=None, *, num_heads, r_tokens=0, pp_loc_list=(), threshold=7e-5,
                      prop_attn=True, patch_size=16, tokens=None):
    """LV-ViT (+ PPT) forward, image by image, in float64. ``images`` (B, 3, H, W), or the stem's output
    ``tokens`` (B, N0 - 1, C) from :func:`embed_images` (to reuse it across PPT settings).

    ``r_tokens``: an int for every block of ``pp_loc_list``. Returns (logits (B, K), infos) in the format of
    ``ppt_reference.reference_forward`` (per compression block: block, variance, pool, size, source, kept,
    scores, similarity)."""
    if tokens is None:
        tokens = embed_images(params, images, patch_size)
    depth = _depth(params)
    pp_loc = sorted(set(int(i) for i in pp_loc_list))
    r_list = [int(r_tokens)] * depth
    all_logits, per_image = [], []
    for image_tokens in tokens:
        logits, infos = forward_tokens_one(params, image_tokens, num_heads=num_heads, r_list=r_list,
                                           pp_loc_list=pp_loc, threshold=threshold, prop_attn=prop_attn)
        all_logits.append(logits)
        per_image.append(infos)
    return np.stack(all_logits), (_batch_infos(per_image) if pp_loc else [])


# --------------------------------------------------------------------------------------------
# Random parameters in the official layout
# --------------------------------------------------------------------------------------------

def random_lvvit_params(rng, *, embed_dim, depth, num_heads, num_classes, img_size=224, patch_size=16,
                        in_chans=3, mlp_ratio=3.0, qkv_std=None):
    """Random LV-ViT parameters under the official checkpoint's names (float32), well conditioned.

    Stem convs: He-normal (ReLU follows); BatchNorm: weight 1 + N(0, 0.1), bias N(0, 0.1), running mean
    N(0, 0.1), running variance in [0.5, 2]; projection conv fan-in scaled. Transformer weights as
    ppt_reference.random_deit_params: std 0.02, qkv ``qkv_std`` (default 0.1 * sqrt(384 / embed_dim)) so
    attention is peaked and score variances differ between images, LayerNorm weight 1 + N(0, 0.1)."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    c = embed_dim
    if qkv_std is None:
        qkv_std = 0.1 * math.sqrt(384.0 / c)
    stem_size = (img_size + 2 * 3 - 7) // 2 + 1
    num_patches = (stem_size // (patch_size // 2)) ** 2
    hidden = int(c * mlp_ratio)
    s = STEM_CHANNELS
    p = {}

    def normal(shape, std):
        return np.clip(rng.standard_normal(shape), -2.0, 2.0) * std

    def ln(name):
        p[name + ".weight"] = 1.0 + rng.normal(0.0, 0.1, c)
        p[name + ".bias"] = rng.normal(0.0, 0.02, c)

    p["cls_token"] = normal((1, 1, c), 0.02)
    p["pos_embed"] = normal((1, num_patches + 1, c), 0.02)
    for i, c_in, k in ((1, in_chans, 7), (2, s, 3), (3, s, 3)):
        p[f"patch_embed.conv{i}.weight"] = normal((s, c_in, k, k), math.sqrt(2.0 / (c_in * k * k)))
        p[f"patch_embed.bn{i}.weight"] = 1.0 + rng.normal(0.0, 0.1, s)
        p[f"patch_embed.bn{i}.bias"] = rng.normal(0.0, 0.1, s)
        p[f"patch_embed.bn{i}.running_mean"] = rng.normal(0.0, 0.1, s)
        p[f"patch_embed.bn{i}.running_var"] = rng.uniform(0.5, 2.0, s)
    q = patch_size // 2
    p["patch_embed.proj.weight"] = normal((c, s, q, q), 1.0 / math.sqrt(s * q * q))
    p["patch_embed.proj.bias"] = rng.normal(0.0, 0.02, c)
    for i in range(depth):
        b = f"blocks.{i}."
        ln(b + "norm1")
        p[b + "attn.qkv.weight"] = normal((3 * c, c), qkv_std)
        p[b + "attn.proj.weight"] = normal((c, c), 0.02)
        p[b + "attn.proj.bias"] = rng.normal(0.0, 0.02, c)
        ln(b + "norm2")
        p[b + "mlp.fc1.weight"] = normal((hidden, c), 0.02)
        p[b + "mlp.fc1.bias"] = rng.normal(0.0, 0.02, hidden)
        p[b + "mlp.fc2.weight"] = normal((c, hidden), 0.02)
        p[b + "mlp.fc2.bias"] = rng.normal(0.0, 0.02, c)
    ln("norm")
    for head in ("head", "aux_head"):
        p[head + ".weight"] = normal((num_classes, c), 0.02)
        p[head + ".bias"] = rng.normal(0.0, 0.02, num_classes)
    return {name: np.asarray(value, dtype=np.float32) for name, value in p.items()}
