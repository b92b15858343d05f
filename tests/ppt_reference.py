"""Independent plain-NumPy reference of PPT (Token Pruning and Pooling) on a timm DeiT/ViT.

Written from /work/shared/ppt-spec.md (and the official PyTorch code it describes), without
importing mindppt, mindspore or torch: it is the ground truth the MindSpore model is tested against.

Everything is computed in float64, one image at a time (so no batch mixing can leak between
images), with vectorised NumPy inside an image. Token orders follow the spec literally:

* prune keeps the N - r_eff best tokens in descending score order (stable sort, class token first);
* pool (ToMe bipartite soft matching) outputs the unmerged A tokens in ascending original position,
  then all B tokens in their original order.

Distilled DeiT (``dist_token`` in the parameters; mindppt's documented rule, which the spec leaves
open): the class and distillation tokens (positions 0 and 1) are protected. Scores, their normalisation
and variance cover the other tokens; r is at most half of them; prune ranks the class then the
distillation token first; pool never merges into or from either, and puts the distillation token back
at position 1 (ToMe's order). The logits are the mean of the two heads.

Parameters are a dict of NumPy arrays keyed by timm names; Dense weights are in torch layout
(``y = x @ W.T + b``).
"""
import math

import numpy as np

LN_EPS = 1e-6

_DEIT_CONFIGS = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}


def deit_config(name):
    """embed_dim / depth / num_heads of DeiT-'tiny', 'small' or 'base'."""
    return dict(_DEIT_CONFIGS[name])


# --------------------------------------------------------------------------------------------
# Basic layers (float64)
# --------------------------------------------------------------------------------------------

_erf_ufunc = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """Exact (libm) erf, element-wise."""
    x = np.asarray(x, dtype=np.float64)
    return _erf_ufunc(x).astype(np.float64)


def gelu(x):
    """Exact GELU: x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, weight, bias, eps=LN_EPS):
    """LayerNorm over the last axis (biased variance, eps inside the square root)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def dense(x, weight, bias):
    """torch-layout linear layer: y = x @ W.T + b."""
    return x @ weight.T + bias


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _p(params, name):
    return np.asarray(params[name], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Backbone pieces for ONE image
# --------------------------------------------------------------------------------------------

def patch_embed(params, image, patch_size):
    """Conv patch embedding (kernel = stride = patch_size) of one image (3, H, W) -> (HW/P^2, C).

    Tokens are in row-major order over the patch grid (timm's ``flatten(2).transpose(1, 2)``).
    """
    weight = _p(params, "patch_embed.proj.weight")  # (C, in_chans, P, P)
    bias = _p(params, "patch_embed.proj.bias")
    c_in, h, w = image.shape
    p = patch_size
    gh, gw = h // p, w // p
    patches = image[:, :gh * p, :gw * p].reshape(c_in, gh, p, gw, p)
    patches = patches.transpose(1, 3, 0, 2, 4).reshape(gh * gw, c_in * p * p)  # (c, kh, kw) order
    return patches @ weight.reshape(weight.shape[0], -1).T + bias


def attention(params, prefix, x, size, num_heads, prop_attn):
    """timm Attention with proportional attention, for one image.

    x: (N, C) already normalised by norm1; size: (N,) token sizes.
    Returns (output (N, C), softmaxed attention (H, N, N), k (H, N, D), v (H, N, D)).
    """
    n, c = x.shape
    head_dim = c // num_heads
    qkv = dense(x, _p(params, prefix + "attn.qkv.weight"), _p(params, prefix + "attn.qkv.bias"))
    qkv = qkv.reshape(n, 3, num_heads, head_dim).transpose(1, 2, 0, 3)  # (3, H, N, D)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q @ k.transpose(0, 2, 1)) * head_dim ** -0.5  # (H, N, N)
    if prop_attn:
        logits = logits + np.log(size)[None, None, :]  # + log(size_j), over heads and queries
    attn = softmax(logits, axis=-1)
    out = (attn @ v).transpose(1, 0, 2).reshape(n, c)
    out = dense(out, _p(params, prefix + "attn.proj.weight"), _p(params, prefix + "attn.proj.bias"))
    return out, attn, k, v


def mlp(params, prefix, x):
    h = gelu(dense(x, _p(params, prefix + "mlp.fc1.weight"), _p(params, prefix + "mlp.fc1.bias")))
    return dense(h, _p(params, prefix + "mlp.fc2.weight"), _p(params, prefix + "mlp.fc2.bias"))


# --------------------------------------------------------------------------------------------
# Adaptive token compression for ONE image (spec sections 1-5)
# --------------------------------------------------------------------------------------------

def significance_scores(attn, v, num_protected=1):
    """ATS significance: (sum_h A[h, 0, j]) * ||v_j||_2 (v_j over all C), protected tokens dropped,
    normalised to sum 1 over j >= num_protected; the class token then gets score 2 (a distillation
    token 2 and the class token 3).

    Returns (scores (N,), unbiased variance of the unprotected scores).
    """
    h, n, d = v.shape
    cls_attn = attn[:, 0, :].sum(axis=0)  # (N,)
    v_norm = np.linalg.norm(v.transpose(1, 0, 2).reshape(n, h * d), axis=1)  # (N,)
    s = (cls_attn * v_norm)[num_protected:]
    s = s / s.sum()
    variance = float(np.var(s, ddof=1))  # divide by (N - p) - 1
    protected = 2.0 + np.arange(num_protected)[::-1]
    return np.concatenate([protected, s]), variance


def prune(x, size, source, scores, r):
    """Keep the first N - r tokens of a stable descending sort by score, in that sorted order."""
    n = x.shape[0]
    order = np.argsort(-scores, kind="stable")
    kept = order[:n - r]
    return x[kept], size[kept], source[kept], kept


def similarity(k, num_protected=1):
    """ToMe's bipartite similarity for one image: keys k (H, N, D) averaged over heads, L2-normalised;
    cosine similarity of A (even positions) to B (odd positions), (|A|, |B|), class-token row -inf
    (and the distillation token's column -inf)."""
    metric = k.mean(axis=0)  # (N, D)
    metric = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    sim = metric[0::2] @ metric[1::2].T  # (|A|, |B|)
    sim[0, :] = -np.inf  # class token never merged
    if num_protected == 2:
        sim[:, 0] = -np.inf  # nothing merges into the distillation token
    return sim


def pool(x, size, source, k, r, num_protected=1):
    """ToMe bipartite soft matching (class token protected) + size-weighted merge, for one image.

    k: (H, N, D) keys of this block's attention. Metric = keys averaged over heads, L2-normalised.
    A = even positions, B = odd positions; the r A tokens with the highest best-match cosine
    similarity are merged into their best B match. Output: unmerged A tokens in ascending position,
    then all B tokens in original order.
    """
    n = x.shape[0]
    a_pos = np.arange(0, n, 2)
    b_pos = np.arange(1, n, 2)
    sim = similarity(k, num_protected)
    node_max = sim.max(axis=1)
    node_idx = sim.argmax(axis=1)  # first maximum on ties, like torch.max
    edge_idx = np.argsort(-node_max, kind="stable")
    src = edge_idx[:r]  # A indices merged away
    unm = np.sort(edge_idx[r:])  # A indices kept, ascending (class token first)
    dst = node_idx[src]  # B indices they merge into

    # Size-weighted mean: sum(size * x) / sum(size); sizes add.
    weighted = x * size[:, None]
    b_weighted = weighted[b_pos].copy()
    b_size = size[b_pos].copy()
    np.add.at(b_weighted, dst, weighted[a_pos][src])
    np.add.at(b_size, dst, size[a_pos][src])
    b_x = b_weighted / b_size[:, None]

    # Source map: union of the merged rows.
    b_source = source[b_pos].copy()
    np.maximum.at(b_source, dst, source[a_pos][src])

    def order(a_part, b_part):
        if num_protected == 2:  # class token, distillation token, then the rest
            return np.concatenate([a_part[:1], b_part[:1], a_part[1:], b_part[1:]], axis=0)
        return np.concatenate([a_part, b_part], axis=0)

    x_out = order(x[a_pos][unm], b_x)
    size_out = order(size[a_pos][unm], b_size)
    source_out = order(source[a_pos][unm], b_source)
    kept = order(a_pos[unm], b_pos)
    return x_out, size_out, source_out, kept


def compress(x, size, source, attn, k, v, r, threshold, num_protected=1):
    """Spec steps 1-5 for one image. Returns x, size, source, and an info dict for this image."""
    n = x.shape[0]
    scores, variance = significance_scores(attn, v, num_protected)
    use_pool = variance < threshold
    r_eff = max(0, min(int(r), (n - num_protected) // 2))
    if r_eff == 0:
        kept = np.arange(n)  # nothing removed, order unchanged (official code does nothing)
    elif use_pool:
        x, size, source, kept = pool(x, size, source, k, r_eff, num_protected)
    else:
        x, size, source, kept = prune(x, size, source, scores, r_eff)
    info = dict(variance=variance, pool=bool(use_pool), size=size.copy(), scores=scores,
                similarity=similarity(k, num_protected), num_protected=num_protected,
                source=source.copy(), kept=np.asarray(kept, dtype=np.int64))
    return x, size, source, info


# --------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------

def _depth(params):
    depth = 0
    while "blocks.%d.norm1.weight" % depth in params:
        depth += 1
    return depth


def _r_schedule(r_tokens, depth):
    if np.isscalar(r_tokens):
        return [int(r_tokens)] * depth
    r_list = [int(r) for r in r_tokens]
    if len(r_list) != depth:
        raise ValueError("r_tokens has %d entries, model depth is %d" % (len(r_list), depth))
    return r_list


def forward_one(params, image, *, num_heads, r_list, pp_loc_list, threshold, prop_attn,
                patch_size):
    """Forward of one image (3, H, W). Returns (logits (num_classes,), list of per-block infos)."""
    depth = _depth(params)
    x = patch_embed(params, np.asarray(image, dtype=np.float64), patch_size)
    pos_embed = _p(params, "pos_embed")[0]
    prefix_tokens = [_p(params, "cls_token").reshape(1, -1)]
    if "dist_token" in params:
        prefix_tokens.append(_p(params, "dist_token").reshape(1, -1))
    num_protected = len(prefix_tokens)
    if pos_embed.shape[0] != x.shape[0] + num_protected:
        raise ValueError("image gives %d patches, pos_embed has %d positions"
                         % (x.shape[0], pos_embed.shape[0] - num_protected))
    x = np.concatenate(prefix_tokens + [x], axis=0) + pos_embed  # (N0, C)
    n0 = x.shape[0]
    size = np.ones(n0)
    source = np.eye(n0, dtype=np.int64)
    infos = []
    for i in range(depth):
        prefix = "blocks.%d." % i
        h = layer_norm(x, _p(params, prefix + "norm1.weight"), _p(params, prefix + "norm1.bias"))
        attn_out, attn, k, v = attention(params, prefix, h, size, num_heads, prop_attn)
        x = x + attn_out
        if i in pp_loc_list:
            x, size, source, info = compress(x, size, source, attn, k, v, r_list[i], threshold, num_protected)
            info["block"] = i
            infos.append(info)
        h = layer_norm(x, _p(params, prefix + "norm2.weight"), _p(params, prefix + "norm2.bias"))
        x = x + mlp(params, prefix, h)
    x = layer_norm(x, _p(params, "norm.weight"), _p(params, "norm.bias"))
    logits = dense(x[0], _p(params, "head.weight"), _p(params, "head.bias"))
    if num_protected == 2:
        logits = (logits + dense(x[1], _p(params, "head_dist.weight"), _p(params, "head_dist.bias"))) / 2
    return logits, infos


def reference_forward(params, images, *, num_heads, r_tokens=0, pp_loc_list=(), threshold=7e-5,
                      prop_attn=True, patch_size=16):
    """PPT-DeiT forward, image by image, in float64.

    images: (B, 3, H, W). r_tokens: int (used in every block of pp_loc_list) or a list with one int
    per block (len == depth; block i uses r_tokens[i] when i is in pp_loc_list).

    Returns (logits (B, num_classes) float64, infos): infos has one dict per compression block, in
    block order, with arrays batched over images:
      'block': int, 'num_protected': int (1, or 2 with a distillation token),
      'variance': (B,) float64, 'pool': (B,) bool (True = pooled),
      'size': (B, N_out) float64, 'source': (B, N_out, N_original) int 0/1,
      'kept': (B, N_out) int, the index (in this block's input token order) each output token
      comes from (prune: the kept token; pool: the unmerged A token, or the B token),
      'scores': (B, N_in) float64, the normalised significance scores (class token set to 2; with a
      distillation token, class 3 and distillation 2),
      'similarity': (B, ceil(N_in / 2), floor(N_in / 2)) float64, the A-to-B cosine similarity that
      pooling matches on (class-token row -inf, and the distillation token's column), whatever the policy.
    """
    images = np.asarray(images, dtype=np.float64)
    depth = _depth(params)
    r_list = _r_schedule(r_tokens, depth)
    pp_loc = sorted(set(int(i) for i in pp_loc_list))
    all_logits, per_image = [], []
    for image in images:
        logits, infos = forward_one(params, image, num_heads=num_heads, r_list=r_list,
                                    pp_loc_list=pp_loc, threshold=threshold, prop_attn=prop_attn,
                                    patch_size=patch_size)
        all_logits.append(logits)
        per_image.append(infos)
    batched = []
    for j, block in enumerate(pp_loc):
        items = [infos[j] for infos in per_image]
        batched.append(dict(
            block=block,
            num_protected=items[0]["num_protected"],
            variance=np.array([it["variance"] for it in items], dtype=np.float64),
            pool=np.array([it["pool"] for it in items], dtype=bool),
            size=np.stack([it["size"] for it in items]).astype(np.float64),
            source=np.stack([it["source"] for it in items]).astype(np.int64),
            kept=np.stack([it["kept"] for it in items]).astype(np.int64),
            scores=np.stack([it["scores"] for it in items]).astype(np.float64),
            similarity=np.stack([it["similarity"] for it in items]).astype(np.float64),
        ))
    return np.stack(all_logits), batched


# --------------------------------------------------------------------------------------------
# Random parameters
# --------------------------------------------------------------------------------------------

def _trunc_normal(rng, shape, std):
    """Normal(0, std) truncated to +-2 std (timm's trunc_normal_ with a=-2std, b=2std)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def random_deit_params(rng, *, embed_dim, depth, num_heads, num_classes, img_size=224,
                       patch_size=16, in_chans=3, qkv_std=None, distilled=False):
    """Random timm-named DeiT parameters (float32), well conditioned and with non-uniform attention.

    Dense weights: trunc-normal std 0.02 (timm) except qkv: std ``qkv_std``, by default
    0.1 * sqrt(384 / embed_dim) (0.1 for DeiT-S), so attention logits have the same spread at every
    width, attention is peaked and the significance-score variance differs between images. LayerNorm
    weights 1 + N(0, 0.1); biases N(0, 0.02); cls_token / pos_embed std 0.02; patch embedding
    fan-in scaled. ``rng`` is a numpy Generator (or an int seed).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    c = embed_dim
    if qkv_std is None:
        qkv_std = 0.1 * math.sqrt(384.0 / c)
    num_patches = (img_size // patch_size) ** 2
    hidden = 4 * c
    fan_in = in_chans * patch_size * patch_size
    p = {}

    def bias(n):
        return rng.normal(0.0, 0.02, n)

    def ln(name):
        p[name + ".weight"] = 1.0 + rng.normal(0.0, 0.1, c)
        p[name + ".bias"] = rng.normal(0.0, 0.02, c)

    p["patch_embed.proj.weight"] = _trunc_normal(rng, (c, in_chans, patch_size, patch_size),
                                                 1.0 / math.sqrt(fan_in))
    p["patch_embed.proj.bias"] = bias(c)
    p["cls_token"] = _trunc_normal(rng, (1, 1, c), 0.02)
    if distilled:
        p["dist_token"] = _trunc_normal(rng, (1, 1, c), 0.02)
    p["pos_embed"] = _trunc_normal(rng, (1, (2 if distilled else 1) + num_patches, c), 0.02)
    for i in range(depth):
        b = "blocks.%d." % i
        ln(b + "norm1")
        p[b + "attn.qkv.weight"] = _trunc_normal(rng, (3 * c, c), qkv_std)
        p[b + "attn.qkv.bias"] = bias(3 * c)
        p[b + "attn.proj.weight"] = _trunc_normal(rng, (c, c), 0.02)
        p[b + "attn.proj.bias"] = bias(c)
        ln(b + "norm2")
        p[b + "mlp.fc1.weight"] = _trunc_normal(rng, (hidden, c), 0.02)
        p[b + "mlp.fc1.bias"] = bias(hidden)
        p[b + "mlp.fc2.weight"] = _trunc_normal(rng, (c, hidden), 0.02)
        p[b + "mlp.fc2.bias"] = bias(c)
    ln("norm")
    p["head.weight"] = _trunc_normal(rng, (num_classes, c), 0.02)
    p["head.bias"] = bias(num_classes)
    if distilled:
        p["head_dist.weight"] = _trunc_normal(rng, (num_classes, c), 0.02)
        p["head_dist.bias"] = bias(num_classes)
    return {name: np.asarray(value, dtype=np.float32) for name, value in p.items()}
