"""Self-checks of the plain-NumPy PPT reference (tests/ppt_reference.py) only."""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ppt_reference as ref  # noqa: E402

SMALL = dict(embed_dim=48, depth=12, num_heads=3)


@pytest.fixture(scope="module")
def small_model():
    rng = np.random.default_rng(0)
    params = ref.random_deit_params(rng, num_classes=10, **SMALL)
    images = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    return params, images


def batch_vit(params, images, num_heads, patch_size=16):
    """Straightforward batched ViT forward (no compression), written independently of the reference."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(images, np.float64)
    b, c_in, h, w = x.shape
    gh, gw = h // patch_size, w // patch_size
    wconv = p["patch_embed.proj.weight"]
    # conv as einsum over (b, c, gh, kh, gw, kw)
    xp = x.reshape(b, c_in, gh, patch_size, gw, patch_size)
    tok = np.einsum("bcyhxw,dchw->byxd", xp, wconv).reshape(b, gh * gw, -1) + p["patch_embed.proj.bias"]
    c = tok.shape[-1]
    cls = np.broadcast_to(p["cls_token"], (b, 1, c))
    x = np.concatenate([cls, tok], axis=1) + p["pos_embed"]
    erf = np.vectorize(math.erf)

    def ln(t, name):
        mu = t.mean(-1, keepdims=True)
        var = t.var(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + 1e-6) * p[name + ".weight"] + p[name + ".bias"]

    i = 0
    hd = c // num_heads
    while "blocks.%d.norm1.weight" % i in p:
        pre = "blocks.%d." % i
        t = ln(x, pre + "norm1")
        qkv = np.einsum("bnc,oc->bno", t, p[pre + "attn.qkv.weight"]) + p[pre + "attn.qkv.bias"]
        n = qkv.shape[1]
        qkv = qkv.reshape(b, n, 3, num_heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (b, n, h, d)
        logits = np.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(hd)
        logits -= logits.max(-1, keepdims=True)
        a = np.exp(logits)
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("bhij,bjhd->bihd", a, v).reshape(b, n, c)
        x = x + o @ p[pre + "attn.proj.weight"].T + p[pre + "attn.proj.bias"]
        t = ln(x, pre + "norm2") @ p[pre + "mlp.fc1.weight"].T + p[pre + "mlp.fc1.bias"]
        t = 0.5 * t * (1 + erf(t / math.sqrt(2)))
        x = x + t @ p[pre + "mlp.fc2.weight"].T + p[pre + "mlp.fc2.bias"]
        i += 1
    x = ln(x, "norm")
    return x[:, 0] @ p["head.weight"].T + p["head.bias"]


def test_deit_config():
    assert ref.deit_config("tiny") == dict(embed_dim=192, depth=12, num_heads=3)
    assert ref.deit_config("small") == dict(embed_dim=384, depth=12, num_heads=6)
    assert ref.deit_config("base") == dict(embed_dim=768, depth=12, num_heads=12)


def test_erf_and_gelu():
    xs = np.linspace(-7, 7, 1001)
    np.testing.assert_array_equal(ref.erf(xs), [math.erf(v) for v in xs])
    assert ref.gelu(np.array([0.0]))[0] == 0.0
    np.testing.assert_allclose(ref.gelu(np.array([1.0]))[0], 0.8413447460685429, rtol=1e-15)


def test_random_params_names_and_dtype(small_model):
    params, _ = small_model
    c = SMALL["embed_dim"]
    assert params["patch_embed.proj.weight"].shape == (c, 3, 16, 16)
    assert params["pos_embed"].shape == (1, 197, c)
    assert params["cls_token"].shape == (1, 1, c)
    assert params["blocks.11.attn.qkv.weight"].shape == (3 * c, c)
    assert params["blocks.0.mlp.fc1.weight"].shape == (4 * c, c)
    assert params["blocks.0.mlp.fc2.weight"].shape == (c, 4 * c)
    assert params["head.weight"].shape == (10, c)
    assert "blocks.12.norm1.weight" not in params
    assert all(v.dtype == np.float32 for v in params.values())


@pytest.mark.parametrize("prop_attn", [True, False])
def test_no_compression_equals_batched_vit(small_model, prop_attn):
    params, images = small_model
    expected = batch_vit(params, images, SMALL["num_heads"])
    logits, infos = ref.reference_forward(params, images, num_heads=3, prop_attn=prop_attn)
    assert infos == []
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)
    # r = 0 in compression blocks: nothing removed, sizes 1, identity source.
    logits0, infos0 = ref.reference_forward(params, images, num_heads=3, r_tokens=0,
                                            pp_loc_list=(3, 6, 9), prop_attn=prop_attn)
    np.testing.assert_allclose(logits0, expected, rtol=1e-10, atol=1e-12)
    assert [i["block"] for i in infos0] == [3, 6, 9]
    for info in infos0:
        assert info["size"].shape == (4, 197)
        assert np.all(info["size"] == 1)
        np.testing.assert_array_equal(info["kept"], np.broadcast_to(np.arange(197), (4, 197)))
        np.testing.assert_array_equal(info["source"], np.broadcast_to(np.eye(197, dtype=int), (4, 197, 197)))


def _check_infos(infos, batch, n0=197):
    """Invariants of sizes, kept indices and source maps through a chain of compressions."""
    prev_size = np.ones((batch, n0))
    prev_source = np.broadcast_to(np.eye(n0, dtype=np.int64), (batch, n0, n0))
    for info in infos:
        size, source, kept = info["size"], info["source"], info["kept"]
        n_out = size.shape[1]
        assert source.shape == (batch, n_out, n0)
        assert set(np.unique(source)) <= {0, 1}
        # rows are disjoint, each row's sum is its size, class token stays first and alone
        assert np.all(source.sum(axis=1) <= 1)
        np.testing.assert_array_equal(source.sum(axis=2), size)
        assert np.all(kept[:, 0] == 0) and np.all(source[:, 0, 0] == 1) and np.all(size[:, 0] == 1)
        for b in range(batch):
            n_in = prev_size.shape[1]
            assert len(np.unique(kept[b])) == n_out and kept[b].max() < n_in
            if info["pool"][b]:
                # pooling conserves total size and coverage; layout: unmerged A ascending, then B
                np.testing.assert_allclose(size[b].sum(), prev_size[b].sum())
                np.testing.assert_array_equal(source[b].sum(0), prev_source[b].sum(0))
                n_b = n_in // 2
                n_a_kept = n_out - n_b
                np.testing.assert_array_equal(kept[b, n_a_kept:], np.arange(1, n_in, 2))
                a_kept = kept[b, :n_a_kept]
                assert np.all(a_kept % 2 == 0) and np.all(np.diff(a_kept) > 0)
                np.testing.assert_array_equal(size[b, :n_a_kept], prev_size[b, a_kept])
                np.testing.assert_array_equal(source[b, :n_a_kept], prev_source[b, a_kept])
                assert np.all(size[b, n_a_kept:] >= prev_size[b, kept[b, n_a_kept:]])
            else:
                # pruning keeps the sizes and sources of the kept tokens
                np.testing.assert_array_equal(size[b], prev_size[b, kept[b]])
                np.testing.assert_array_equal(source[b], prev_source[b, kept[b]])
        prev_size, prev_source = size, source


@pytest.mark.parametrize("threshold", [0.0, 1e9, "mixed"])
def test_token_schedule_and_invariants(small_model, threshold):
    params, images = small_model
    if threshold == "mixed":
        # choose a threshold between the block-3 variances of the images
        _, infos = ref.reference_forward(params, images, num_heads=3, r_tokens=50,
                                         pp_loc_list=(3,), threshold=0.0)
        v = np.sort(infos[0]["variance"])
        threshold = math.sqrt(v[1] * v[2])
    logits, infos = ref.reference_forward(params, images, num_heads=3, r_tokens=50,
                                          pp_loc_list=(3, 6, 9), threshold=threshold)
    assert logits.shape == (4, 10) and np.all(np.isfinite(logits))
    assert [i["block"] for i in infos] == [3, 6, 9]
    assert [i["size"].shape[1] for i in infos] == [147, 97, 49]
    for info in infos:
        np.testing.assert_array_equal(info["pool"], info["variance"] < threshold)
    if threshold == 0.0:
        assert not any(i["pool"].any() for i in infos)
    elif threshold == 1e9:
        assert all(i["pool"].all() for i in infos)
        assert np.all(infos[-1]["size"].sum(axis=1) == 197)
    else:
        assert infos[0]["pool"].sum() == 2
    _check_infos(infos, len(images))


def test_images_are_independent(small_model):
    params, images = small_model
    kw = dict(num_heads=3, r_tokens=[0, 0, 30, 40, 0, 0, 50, 0, 0, 0, 0, 0],
              pp_loc_list=(2, 3, 6), threshold=2.0e-4)
    logits, infos = ref.reference_forward(params, images, **kw)
    assert [i["size"].shape[1] for i in infos] == [167, 127, 77]
    for b in range(len(images)):
        lb, ib = ref.reference_forward(params, images[b:b + 1], **kw)
        np.testing.assert_array_equal(lb[0], logits[b])
        for one, full in zip(ib, infos):
            for key in ("variance", "pool", "size", "source", "kept"):
                np.testing.assert_array_equal(one[key][0], full[key][b])


def test_prune_hand_example():
    x = np.arange(6, dtype=float)[:, None] * np.ones((1, 2))
    size = np.array([1.0, 2, 1, 3, 1, 1])
    source = np.eye(6, dtype=np.int64)
    scores = np.array([2.0, 0.1, 0.3, 0.1, 0.3, 0.2])  # ties resolved by position (stable)
    xo, so, sro, kept = ref.prune(x, size, source, scores, 2)
    np.testing.assert_array_equal(kept, [0, 2, 4, 5])
    np.testing.assert_array_equal(xo[:, 0], [0, 2, 4, 5])
    np.testing.assert_array_equal(so, [1, 1, 1, 1])
    np.testing.assert_array_equal(sro, source[[0, 2, 4, 5]])


def test_pool_hand_example():
    # 7 tokens: A = 0,2,4,6 ; B = 1,3,5. One head, keys 2-d.
    keys = np.array([[1.0, 0.0],   # 0 cls (never merged)
                     [1.0, 0.0],   # 1 B
                     [0.0, 1.0],   # 2 A -> best B is 3 (identical)
                     [0.0, 1.0],   # 3 B
                     [1.0, 0.1],   # 4 A -> best B is 1 (cos ~0.995)
                     [-1.0, 0.0],  # 5 B
                     [1.0, 1.0]])  # 6 A -> best B 1 or 3 (cos 0.707), ties -> first (1)
    k = keys[None]
    x = np.arange(7, dtype=float)[:, None] * np.array([[1.0, 10.0]])
    size = np.array([1.0, 1, 2, 1, 3, 1, 1])
    source = np.eye(7, dtype=np.int64)
    xo, so, sro, kept = ref.pool(x, size, source, k, 2)
    # merged: A2 -> B3, A4 -> B1 ; unmerged A: 0, 6 ; then B: 1, 3, 5
    np.testing.assert_array_equal(kept, [0, 6, 1, 3, 5])
    np.testing.assert_allclose(so, [1, 1, 1 + 3, 1 + 2, 1])
    np.testing.assert_allclose(xo[:, 0], [0, 6, (1 * 1 + 4 * 3) / 4, (3 * 1 + 2 * 2) / 3, 5])
    np.testing.assert_allclose(xo[:, 1], 10 * xo[:, 0])
    np.testing.assert_array_equal(sro.sum(0), np.ones(7))
    np.testing.assert_array_equal(np.nonzero(sro[2])[0], [1, 4])
    np.testing.assert_array_equal(np.nonzero(sro[3])[0], [2, 3])


def test_significance_scores_hand_example():
    attn = np.zeros((2, 4, 4))
    attn[0, 0] = [0.1, 0.2, 0.3, 0.4]
    attn[1, 0] = [0.4, 0.3, 0.2, 0.1]
    v = np.ones((2, 4, 2))
    v[:, 3] *= 2.0  # ||v_3|| = 4, others 2
    scores, var = ref.significance_scores(attn, v)
    raw = np.array([0.5 * 2, 0.5 * 2, 0.5 * 4])
    expected = raw / raw.sum()
    np.testing.assert_allclose(scores, np.concatenate([[2.0], expected]))
    np.testing.assert_allclose(var, np.var(expected, ddof=1))


def test_deit_small_block3_variances_split_a_batch():
    """random_deit_params gives per-image score variances that differ (a threshold can split a batch)."""
    rng = np.random.default_rng(0)
    params = ref.random_deit_params(rng, num_classes=10, **ref.deit_config("small"))
    # Blocks after 3 do not influence block 3: drop them to keep this fast.
    params = {k: v for k, v in params.items()
              if not k.startswith("blocks.") or int(k.split(".")[1]) <= 3}
    images = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    _, infos = ref.reference_forward(params, images, num_heads=6, r_tokens=50, pp_loc_list=(3,))
    v = infos[0]["variance"]
    assert v.max() / v.min() > 1.5


@pytest.mark.parametrize("threshold", [0.0, 1e9], ids=["prune", "pool"])
def test_distilled_tokens_protected(threshold):
    """With a distillation token: r at most half the unprotected tokens, class and distillation tokens at
    positions 0 and 1 with scores 3 and 2, alone, in every block; variance over the other tokens; pooling
    outputs class, distillation, unmerged A (ascending), other B."""
    rng = np.random.default_rng(4)
    params = ref.random_deit_params(rng, num_classes=10, distilled=True, **SMALL)
    assert params["pos_embed"].shape == (1, 198, SMALL["embed_dim"])
    images = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    logits, infos = ref.reference_forward(params, images, num_heads=3, r_tokens=50, pp_loc_list=(3, 6, 9),
                                          threshold=threshold)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert [i["size"].shape[1] for i in infos] == [148, 98, 50]  # r = min(50, (98 - 2) // 2) = 48 at block 9
    eye = np.eye(198, dtype=np.int64)
    for info in infos:
        assert info["num_protected"] == 2 and np.all(info["pool"] == (threshold > 0))
        np.testing.assert_array_equal(info["kept"][:, :2], [[0, 1], [0, 1]])
        np.testing.assert_array_equal(info["scores"][:, :2], [[3.0, 2.0], [3.0, 2.0]])
        np.testing.assert_array_equal(info["size"][:, :2], np.ones((2, 2)))
        np.testing.assert_array_equal(info["source"][:, :2], np.broadcast_to(eye[:2], (2, 2, 198)))
        for b in range(2):
            np.testing.assert_allclose(info["variance"][b], np.var(info["scores"][b, 2:], ddof=1), rtol=1e-12)
            np.testing.assert_allclose(info["scores"][b, 2:].sum(), 1.0, rtol=1e-12)
            assert np.all(np.isneginf(info["similarity"][b, 0])) and np.all(np.isneginf(info["similarity"][b, :, 0]))
            if threshold > 0:
                n_in = info["scores"].shape[1]
                kept, n_b = info["kept"][b], n_in // 2
                a_part = kept[2:len(kept) - n_b + 1]
                assert np.all(a_part % 2 == 0) and np.all(np.diff(a_part) > 0)
                np.testing.assert_array_equal(kept[len(kept) - n_b + 1:], np.arange(3, n_in, 2))
