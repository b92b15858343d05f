"""The fused CPU kernels besides GELU (mindppt.models.fused_cpu): LayerNorm, softmax with PPT's log-size
bias, the attention's head split/merge, patch extraction, PPT's compression (significance, plan,
size-weighted merge, source rows) and the Linear layer's bias gradient, each against float64 NumPy,
forward and backward, at every instruction-set level this CPU runs.

Bounds are in float32 unit roundoffs of the quantities involved (the kernels sum in double where a long
sum is taken; a few roundings per element otherwise). Copies (head split/merge, patches, source rows of
0/1 values) and discrete decisions (which token goes where) are exact.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops
from model_helpers import U32, SumOf, exact_gelu, gelu_tolerance, sharpen_attention
from ppt_reference import pool, prune, significance_scores

from mindppt.models import create_model, fused_cpu
from mindppt.models.vit import GELU, Attention, DropPath, LayerNorm, Linear, Softmax

RNG = np.random.default_rng(0)


def _levels_this_cpu_runs():
    level = fused_cpu.isa_level()
    if level not in fused_cpu.X86_64_LEVELS:
        return [level]
    return list(fused_cpu.X86_64_LEVELS[:fused_cpu.X86_64_LEVELS.index(level) + 1])


@pytest.fixture(scope="module", params=_levels_this_cpu_runs())
def library(request, tmp_path_factory):
    """The kernels built for each instruction-set level this CPU can run (lower levels included)."""
    return fused_cpu.build_library(request.param, str(tmp_path_factory.mktemp(request.param)))


def f32(a):
    return np.asarray(a, np.float32)


def t(a):
    return ms.Tensor(f32(a))


def test_layer_norm_forward_and_backward_against_float64(library):
    forward, backward = fused_cpu.layer_norm_ops(library)
    x = f32(RNG.standard_normal((3, 37, 384)) * 3 + 1).astype(np.float64)
    w, b = f32(RNG.standard_normal(384)).astype(np.float64), f32(RNG.standard_normal(384)).astype(np.float64)
    dy = f32(RNG.standard_normal(x.shape)).astype(np.float64)
    eps = ms.Tensor(np.array([1e-6], np.float32))
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
    xhat = (x - mean) * rstd
    y = forward(t(x), t(w), t(b), eps).asnumpy()
    # roundings of x - mean (relative to |x| + |mean|), of 1 / std, of the products and the bias add
    scale = (np.abs(x) + np.abs(mean)) * rstd * np.abs(w)
    assert np.all(np.abs(y - (xhat * w + b)) <= 8 * U32 * (scale + np.abs(xhat * w) + np.abs(b)))
    dx, dw, db = (o.asnumpy() for o in backward(t(x), t(w), eps, t(dy)))
    g = dy * w
    a, c = g.mean(-1, keepdims=True), (g * xhat).mean(-1, keepdims=True)
    exact_dx = rstd * (g - a - xhat * c)
    spread = (np.abs(x) + np.abs(mean)) * rstd  # the rounding of x - mean, carried by xhat
    # c is a mean of g * xhat over rounded xhat: its error scales with the row's mean of |g| * spread, not
    # with |c| (which cancellation can make small)
    c_error = (np.abs(g) * spread).mean(-1, keepdims=True)
    assert np.all(np.abs(dx - exact_dx) <= 16 * U32 * rstd * (np.abs(g) + np.abs(a) + spread * (np.abs(c) + c_error)))
    rows = dy.reshape(-1, 384), xhat.reshape(-1, 384)
    spread = spread.reshape(-1, 384)
    assert np.all(np.abs(dw - (rows[0] * rows[1]).sum(0)) <= 8 * U32 * np.abs(rows[0] * spread).sum(0))
    assert np.all(np.abs(db - rows[0].sum(0)) <= 8 * U32 * np.abs(rows[0]).sum(0))


@pytest.mark.parametrize("with_sizes", [False, True])
def test_softmax_forward_and_backward_against_float64(library, with_sizes):
    forward, size_forward, backward = fused_cpu.softmax_ops(library)
    x = f32(RNG.standard_normal((2, 3, 29, 29)) * 4).astype(np.float64)
    x[0, 0, 0, 1] = -200.0  # exp underflows to an exact 0
    size = np.floor(RNG.uniform(1, 12, (2, 29)))
    z = x + (np.log(size)[:, None, None, :] if with_sizes else 0.0)
    e = np.exp(z - z.max(-1, keepdims=True))
    exact = e / e.sum(-1, keepdims=True)
    y = (size_forward(t(x), t(size)) if with_sizes else forward(t(x))).asnumpy().astype(np.float64)
    # a float32 log(size) (< 2.5) off by up to 2 units in its last place, in the key and the normaliser
    assert np.all(np.abs(y - exact) <= (29 + 8 + 4 * 2.5) * U32 * exact + 1e-45)
    assert y[0, 0, 0, 1] == 0.0 and np.all(np.abs(y.sum(-1) - 1) <= 40 * U32)
    dy = f32(RNG.standard_normal(x.shape)).astype(np.float64)
    dx = backward(t(y), t(dy)).asnumpy()
    dot = (dy * y).sum(-1, keepdims=True)
    bound = (29 + 8) * U32 * np.abs(y) * (np.abs(dy) + np.abs(dy * y).sum(-1, keepdims=True))
    assert np.all(np.abs(dx - y * (dy - dot)) <= bound + 1e-45)


def test_head_split_merge_and_patches_are_exact_copies(library):
    split, split_backward = fused_cpu.split_qkv_ops(6, library)
    swap = fused_cpu.swap_axes_op(library)
    qkv = f32(RNG.standard_normal((2, 7, 3 * 6 * 4)))
    scale = f32([0.125])  # a power of two: the scaled q is exact too
    q, k, v = (o.asnumpy() for o in split(ms.Tensor(qkv), ms.Tensor(scale)))
    heads = qkv.reshape(2, 7, 3, 6, 4).transpose(2, 0, 3, 1, 4)
    assert np.array_equal(q, heads[0] * scale[0]) and np.array_equal(k, heads[1]) and np.array_equal(v, heads[2])
    grads = [f32(RNG.standard_normal(q.shape)) for _ in range(3)]
    dqkv = split_backward(*(ms.Tensor(g) for g in grads), ms.Tensor(scale)).asnumpy()
    expected = np.stack([grads[0] * scale[0], grads[1], grads[2]]).transpose(1, 3, 0, 2, 4).reshape(qkv.shape)
    assert np.array_equal(dqkv, expected)
    assert np.array_equal(swap(ms.Tensor(q)).asnumpy(), q.transpose(0, 2, 1, 3))
    images = f32(RNG.standard_normal((2, 3, 32, 48)))
    patches = fused_cpu.patchify_op(16, library)(ms.Tensor(images)).asnumpy()
    expected = images.reshape(2, 3, 2, 16, 3, 16).transpose(0, 2, 4, 1, 3, 5).reshape(12, 3 * 256)
    assert np.array_equal(patches, expected)


def _random_block(batch, heads, tokens, dim, width):
    """x, attention, the qkv projection with its keys and values split by head (B, H, N, D), sizes."""
    attn = RNG.random((batch, heads, tokens, tokens)) ** 4
    attn = f32(attn / attn.sum(-1, keepdims=True))
    qkv = f32(RNG.standard_normal((batch, tokens, 3 * heads * dim)))
    _, keys, values = qkv.reshape(batch, tokens, 3, heads, dim).transpose(2, 0, 3, 1, 4)
    return (f32(RNG.standard_normal((batch, tokens, width))), attn, qkv, keys, values,
            f32(np.floor(RNG.uniform(1, 5, (batch, tokens)))))


def _summary(library, qkv, heads):
    """The compression's keys and value norms from the qkv projection, by the kernel."""
    summarise = fused_cpu.keys_and_value_norms_op(heads, library)
    keys, norms = summarise(t(qkv), ms.Tensor(f32([heads, 1.0])))
    return keys.asnumpy(), norms.asnumpy()


def assert_summary_is_exact_sums_rounded_once(keys, norms, k, v):
    """keys: the sum over heads of k (B, H, N, D); norms: each token's value norm over all heads; float32 from
    double sums, so within one rounding of the exact value (plus the double sums' own, far smaller)."""
    exact_keys = k.astype(np.float64).sum(axis=1)
    slack = k.shape[1] * 2.0 ** -52 * np.abs(k.astype(np.float64)).sum(axis=1)
    assert np.all(np.abs(keys - exact_keys) <= U32 * np.abs(exact_keys) + slack)
    exact_norms = np.sqrt((v.astype(np.float64) ** 2).sum(axis=(1, 3)))
    assert np.all(np.abs(norms - exact_norms) <= 1.01 * U32 * exact_norms)


HALF = ms.Tensor(0.5, ms.float32)


def variance_for(pooled):
    """Variances that make the images with pooled = 1 pool at the threshold HALF."""
    return f32(np.where(pooled == 1, 0.25, 0.75))


@pytest.mark.parametrize("num_protected", [1, 2])
def test_compression_kernels_follow_the_reference(library, num_protected):
    """From the qkv projection: the head-summed keys and the value norms within one rounding of their exact
    values; significance within float32 bounds of the reference; per image (prune or pool, chosen here) the
    kept positions exactly the reference's, the merged tokens its size-weighted means, sizes and source
    rows exact; the merge's gradient is the weighted copy back to each input token (0 if pruned)."""
    batch, heads, tokens, dim, width, r = 6, 3, 41, 8, 24, 12
    x, attn, qkv, k, v, size = _random_block(batch, heads, tokens, dim, width)
    keys, norms = _summary(library, qkv, heads)
    assert keys.shape == (batch, tokens, dim) and norms.shape == (batch, tokens)
    assert_summary_is_exact_sums_rounded_once(keys, norms, k, v)
    significance, plan, merge, merge_backward, sum_rows = fused_cpu.compression_ops(tokens - r, library)
    protect = ms.Tensor(np.array([num_protected], np.float32))
    scores, variance = (o.asnumpy() for o in significance(t(attn), t(norms), protect))
    pooled = np.array([1, 0, 1, 0, 1, 0], np.float32)
    kept, dest = (o.asnumpy() for o in plan(t(scores), t(variance_for(pooled)), HALF, t(keys), protect))
    new_x, new_size = (o.asnumpy() for o in merge(t(x), t(size), ms.Tensor(dest)))
    source = f32(np.eye(tokens)[None].repeat(batch, 0) * RNG.integers(0, 2, (batch, tokens, 1)))
    new_source = sum_rows(t(source), ms.Tensor(dest)).asnumpy()
    for i in range(batch):
        ref_scores, ref_variance = significance_scores(attn[i].astype(np.float64), v[i].astype(np.float64),
                                                       num_protected)
        assert np.array_equal(scores[i, :num_protected], ref_scores[:num_protected])
        assert np.all(np.abs(scores[i] - ref_scores) <= 64 * U32 * ref_scores.max())
        assert abs(variance[i] - ref_variance) <= 256 * U32 * ref_variance
        args = (x[i].astype(np.float64), size[i].astype(np.float64), source[i].astype(np.float64))
        if pooled[i]:
            ref_x, ref_size, ref_source, ref_kept = pool(*args, k[i].astype(np.float64), r, num_protected)
        else:
            ref_x, ref_size, ref_source, ref_kept = prune(*args, scores[i].astype(np.float64), r)
        assert np.array_equal(kept[i], ref_kept), (i, kept[i], ref_kept)
        assert np.array_equal(new_size[i], ref_size) and np.array_equal(new_source[i], ref_source)
        assert np.all(np.abs(new_x[i] - ref_x) <= 16 * U32 * np.abs(ref_x).max(axis=1, keepdims=True) * 4)
        assert sorted(set(dest[i]) - {-1}) == list(range(tokens - r))
        assert np.array_equal(dest[i][kept[i]], np.arange(tokens - r))  # each kept token heads its own slot
        assert (dest[i] == -1).sum() == (0 if pooled[i] else r)
    dnew = f32(RNG.standard_normal(new_x.shape))
    dx = merge_backward(t(dnew), t(size), t(new_size), ms.Tensor(dest)).asnumpy()
    for i in range(batch):
        for j in range(tokens):
            d = dest[i, j]
            expected = np.zeros(width) if d < 0 else size[i, j] / new_size[i, d] * dnew[i, d].astype(np.float64)
            assert np.all(np.abs(dx[i, j] - expected) <= 4 * U32 * np.abs(expected))


@pytest.mark.parametrize("num_protected", [1, 2])
def test_pool_plan_at_model_size_follows_the_reference(library, num_protected):
    """At a DeiT-S block's size the matching is shared between the kernel threads, the split falling
    inside an image, and the batch is matched in groups (its buffers hold 9 such images at a time): each
    pooled image's kept positions are still exactly the reference's."""
    batch, heads, tokens, dim, r = 21, 6, 197, 64, 50
    x, attn, qkv, k, v, size = _random_block(batch, heads, tokens, dim, 8)
    keys, _ = _summary(library, qkv, heads)
    _, plan, _, _, _ = fused_cpu.compression_ops(tokens - r, library)
    pooled = np.tile(f32([1, 1, 0]), batch // 3)
    scores = f32(RNG.random((batch, tokens)))
    protect = ms.Tensor(np.array([num_protected], np.float32))
    kept, _ = (o.asnumpy() for o in plan(t(scores), t(variance_for(pooled)), HALF, t(keys), protect))
    for i in range(batch):
        args = (x[i].astype(np.float64), size[i].astype(np.float64), np.eye(tokens))
        if pooled[i]:
            ref_kept = pool(*args, k[i].astype(np.float64), r, num_protected)[3]
        else:
            ref_kept = prune(*args, scores[i].astype(np.float64), r)[3]
        assert np.array_equal(kept[i], ref_kept), i


def _grads(cell, x, weight):
    net = SumOf(cell)
    return ms.grad(net, grad_position=0, weights=net.trainable_params())(ms.Tensor(x), ms.Tensor(weight))


def test_cells_take_the_fused_path_in_float32_and_match_the_portable_cells():
    """LayerNorm, Softmax (with bias) and Linear: outputs and gradients of the fused and the portable
    cell agree within float32 bounds; the portable cell is the graph Ascend and GPU run."""
    x = f32(RNG.standard_normal((4, 9, 64)))
    weight = f32(RNG.standard_normal((4, 9, 64)))
    with fused_cpu.disabled():
        portable = [LayerNorm(64), Linear(64, 64)]
    fused = [LayerNorm(64), Linear(64, 64)]
    assert fused[0].fused is not None and fused[1].fn is not None
    assert portable[0].fused is None and portable[1].fn is None
    for a, b in zip(fused, portable):
        for pa, pb in zip(a.trainable_params(), b.trainable_params()):
            pa.set_data(ms.Tensor(f32(RNG.standard_normal(pa.shape))))
            pb.set_data(pa.data.copy())
        ya, yb = a(ms.Tensor(x)).asnumpy(), b(ms.Tensor(x)).asnumpy()
        assert np.abs(ya - yb).max() <= 64 * U32 * np.abs(yb).max()
        (dxa, dwa), (dxb, dwb) = _grads(a, x, weight), _grads(b, x, weight)
        assert np.abs(dxa.asnumpy() - dxb.asnumpy()).max() <= 256 * U32 * np.abs(dxb.asnumpy()).max()
        for ga, gb in zip(dwa, dwb):
            assert np.abs(ga.asnumpy() - gb.asnumpy()).max() <= 256 * U32 * np.abs(gb.asnumpy()).max()
    logits = f32(RNG.standard_normal((2, 3, 9, 9)) * 3)
    size = f32(RNG.integers(1, 9, (2, 9)))
    with fused_cpu.disabled():
        portable_softmax = Softmax(prop_attn=True)
    fused_softmax = Softmax(prop_attn=True)
    assert fused_softmax.fused is not None and portable_softmax.fused is None
    ya = fused_softmax(ms.Tensor(logits), ms.Tensor(size)).asnumpy()
    yb = portable_softmax(ms.Tensor(logits), ms.Tensor(size)).asnumpy()
    assert np.abs(ya - yb).max() <= 64 * U32


def test_drop_path_kernel_scales_samples_as_the_portable_cell():
    """DropPath in training: with the same seed the kernel and the broadcasting Mul draw the same mask, and
    outputs and input gradients are equal bit for bit (one float32 product per element either way); dropped
    samples are zero, kept ones scaled by 1 / keep_prob."""
    x = f32(RNG.standard_normal((16, 5, 8)))
    weight = f32(RNG.standard_normal((16, 5, 8)))

    def build():
        ms.set_seed(7)
        cell = DropPath(0.5)
        cell.set_train(True)
        return cell
    fused = build()
    with fused_cpu.disabled():
        portable = build()
    assert fused.scale_samples is not None and portable.scale_samples is None
    y, y_portable = fused(t(x)).asnumpy(), portable(t(x)).asnumpy()
    np.testing.assert_array_equal(y, y_portable)
    kept = np.abs(y).reshape(16, -1).max(axis=1) > 0
    assert 0 < kept.sum() < 16
    np.testing.assert_array_equal(y[kept], x[kept] * 2)
    (dx, _), (dx_portable, _) = _grads(fused, x, weight), _grads(portable, x, weight)
    np.testing.assert_array_equal(dx.asnumpy(), dx_portable.asnumpy())


@pytest.mark.parametrize("threshold", [0.0, 1e9])
def test_fused_training_gradients_match_the_portable_model(threshold):
    """A PPT DeiT-Ti (all-prune, all-pool; drop path off) built with and without the fused kernels, same
    weights: the loss gradient of every parameter agrees within float32 bounds, so the kernels' backward
    passes (LayerNorm, softmax, head split/merge, the merge, GELU, the Linear bias) train the same model."""
    def build():
        ms.set_seed(0)
        # peaked attention, as a trained model's: no near-tied scores for either path's rounding to order
        return sharpen_attention(create_model("ppt_deit_tiny_patch16_224", img_size=64, num_classes=10,
                                              r_tokens=4, pp_loc_list=(1, 3), threshold=threshold))
    fused = build()
    with fused_cpu.disabled():
        portable = build()
    images = ms.Tensor(f32(RNG.standard_normal((4, 3, 64, 64))))
    targets = ms.Tensor(f32(RNG.standard_normal((4, 10))))

    def grads(model):
        model.set_train(True)
        net = SumOf(model)
        return ms.grad(net, grad_position=None, weights=model.trainable_params())(images, targets)

    for name, (a, b) in zip((p.name for p in fused.trainable_params()), zip(grads(fused), grads(portable))):
        a, b = a.asnumpy(), b.asnumpy()
        assert np.abs(a - b).max() <= 2 ** 12 * U32 * max(np.abs(b).max(), 1e-30), name


def _product_bound(a, b):
    """Rounding bound of float32 products a @ b^T summed in any order: K unit roundoffs of |a| @ |b|^T."""
    return (a.shape[-1] + 2) * U32 * (np.abs(a) @ np.swapaxes(np.abs(b), -1, -2))


def test_gemm_kernels_against_float64(library):
    """The linear layer (plain, with the skip connection, with the GELU), its input, weight and bias gradients
    and the two attention products, each within the float32 bound of a K-term dot product of the float64
    result (the bias gradient, summed in double, within one rounding); the heads come out merged."""
    rng = np.random.default_rng(1)  # its own stream: the other tests' inputs stay as they were
    linear, linear_residual, linear_gelu = fused_cpu.linear_ops(library)
    scores, values, scores_grad, values_grad = fused_cpu.attention_ops(library)
    w = f32(rng.standard_normal((131, 96)) / 10).astype(np.float64)
    b = f32(rng.standard_normal(131)).astype(np.float64)
    # 203 rows: the threads split the columns; 517: they split the rows. Neither is a multiple of a block.
    for rows in (203, 517):
        x = f32(rng.standard_normal((rows, 96))).astype(np.float64)
        res = f32(rng.standard_normal((rows, 131))).astype(np.float64)
        pre = x @ w.T + b
        bound = _product_bound(x, w) + 2 * U32 * (np.abs(pre) + np.abs(b))
        assert np.all(np.abs(linear(t(x), t(w), t(b)).asnumpy() - pre) <= bound)
        assert np.all(np.abs(linear_residual(t(x), t(w), t(b), t(res)).asnumpy() - (pre + res))
                      <= bound + 2 * U32 * (np.abs(res) + np.abs(pre + res)))
        gelu = linear_gelu(t(x), t(w), t(b)).asnumpy().astype(np.float64)
        # the pre-activation's rounding carried through |gelu'| <= 1.13, then the GELU's own bound
        assert np.all(np.abs(gelu - exact_gelu(pre)) <= 1.13 * bound + gelu_tolerance(pre))
    input_grad, weight_grad = fused_cpu.linear_grad_ops(library)
    # the gradients, with the rows as two leading axes: 203 rows split dx's columns, 517 its rows; dw is split
    # by its rows (131: not a multiple of a block); the patch projection's weight (N, C, P, P) is read as (N, K)
    for batch, tokens in ((7, 29), (11, 47)):
        dy = f32(rng.standard_normal((batch, tokens, 131))).astype(np.float64)
        x = f32(rng.standard_normal((batch, tokens, 96))).astype(np.float64)
        dx = input_grad(t(dy), t(w.reshape(131, 6, 4, 4))).asnumpy()
        assert dx.shape == (batch, tokens, 96)
        assert np.all(np.abs(dx - dy @ w) <= _product_bound(dy, w.T))
        dw, db = (g.asnumpy() for g in weight_grad(t(dy), t(x)))
        rows_dy, rows_x = dy.reshape(-1, 131), x.reshape(-1, 96)
        assert np.all(np.abs(dw - rows_dy.T @ rows_x) <= _product_bound(rows_dy.T, rows_x.T))
        double_sum_error = rows_dy.shape[0] * 2.0 ** -53 * np.abs(rows_dy).sum(0)
        assert np.all(np.abs(db - rows_dy.sum(0)) <= U32 * np.abs(rows_dy.sum(0)) + 2 * double_sum_error)
    q = f32(rng.standard_normal((2, 3, 29, 16))).astype(np.float64)
    k = f32(rng.standard_normal((2, 3, 23, 16))).astype(np.float64)
    assert np.all(np.abs(scores(t(q), t(k)).asnumpy() - q @ np.swapaxes(k, -1, -2)) <= _product_bound(q, k))
    attn = f32(rng.uniform(0, 1, (2, 3, 29, 23))).astype(np.float64)
    v = f32(rng.standard_normal((2, 3, 23, 16))).astype(np.float64)
    heads = attn @ v
    merged = values(t(attn), t(v)).asnumpy()
    assert merged.shape == (2, 29, 48)
    bound = _product_bound(attn, np.swapaxes(v, -1, -2))
    assert np.all(np.abs(merged.reshape(2, 29, 3, 16).transpose(0, 2, 1, 3) - heads) <= bound)
    # the gradients: of the scores for dout (B, H, N, M); of the values for dout with the heads merged
    dout = f32(rng.standard_normal((2, 3, 29, 23))).astype(np.float64)
    dq, dk = (g.asnumpy() for g in scores_grad(t(dout), t(q), t(k)))
    assert np.all(np.abs(dq - dout @ k) <= _product_bound(dout, np.swapaxes(k, -1, -2)))
    dout_t = np.swapaxes(dout, -1, -2)
    assert np.all(np.abs(dk - dout_t @ q) <= _product_bound(dout_t, np.swapaxes(q, -1, -2)))
    dmerged = f32(rng.standard_normal((2, 29, 48))).astype(np.float64)
    dheads = dmerged.reshape(2, 29, 3, 16).transpose(0, 2, 1, 3)
    dattn, dv = (g.asnumpy() for g in values_grad(t(dmerged), t(attn), t(v)))
    assert np.all(np.abs(dattn - dheads @ np.swapaxes(v, -1, -2)) <= _product_bound(dheads, v))
    assert np.all(np.abs(dv - np.swapaxes(attn, -1, -2) @ dheads)
                  <= _product_bound(np.swapaxes(attn, -1, -2), np.swapaxes(dheads, -1, -2)))


@pytest.mark.parametrize("with_sizes", [False, True])
def test_fused_attention_against_float64(library, with_sizes):
    """softmax(scale q k^T (+ log size)) v per head from the qkv projection read in place, heads merged:
    within the bound of the logits' rounding carried through the softmax, plus the product's own bound.
    Enough images and heads that the work is split between the kernel threads."""
    rng = np.random.default_rng(3)
    batch, tokens, heads, dim, scale = 3, 29, 6, 16, 0.3  # a scale that is not a power of two
    attend, attend_sizes = fused_cpu.fused_attention_ops(heads, library=library)
    qkv = f32(rng.standard_normal((batch, tokens, 3 * heads * dim))).astype(np.float64)
    size = np.floor(rng.uniform(1, 12, (batch, tokens)))
    setting = ms.Tensor(f32([heads, scale]))
    inputs = (t(qkv), t(size), setting) if with_sizes else (t(qkv), setting)
    out = (attend_sizes if with_sizes else attend)(*inputs).asnumpy()
    q, k, v = qkv.reshape(batch, tokens, 3, heads, dim).transpose(2, 0, 3, 1, 4)
    logits = scale * q @ np.swapaxes(k, -1, -2) + (np.log(size)[:, None, None, :] if with_sizes else 0.0)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    exact = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, heads * dim)
    # logits: the product's bound, the scaling and a float32 log(size) (< 2.5, 2 units in its last place)
    logit_error = _product_bound(scale * q, k) + 2 * U32 * np.abs(logits) + (5 * 2.5 * U32 if with_sizes else 0)
    # a softmax moves by at most twice its logits' largest error, relative, plus its own roundings
    prob_error = probs * (2 * logit_error.max(-1, keepdims=True) + (tokens + 8) * U32)
    bound = prob_error @ np.abs(v) + _product_bound(probs, np.swapaxes(v, -1, -2))
    bound = bound.transpose(0, 2, 1, 3).reshape(exact.shape)
    assert out.shape == exact.shape
    assert np.all(np.abs(out - exact) <= bound)
    # a compression block's variant: the same output, the class token's probabilities, and the keys and
    # value norms of the standalone kernel, bit for bit
    attend, attend_sizes = fused_cpu.fused_attention_ops(heads, internals=True, library=library)
    out_too, cls, keys, norms = (o.asnumpy() for o in (attend_sizes if with_sizes else attend)(*inputs))
    assert np.array_equal(out_too, out)
    assert cls.shape == (batch, heads, 1, tokens)
    assert np.all(np.abs(cls - probs[:, :, :1]) <= prob_error[:, :, :1])
    assert_summary_is_exact_sums_rounded_once(keys, norms, k, v)
    alone = _summary(library, qkv, heads)
    assert np.array_equal(keys, alone[0]) and np.array_equal(norms, alone[1])


def test_gemm_cells_give_the_portable_outputs_and_gradients():
    """Linear with a residual or a GELU at inference, and Attention (its products and head merge in the gemm
    kernels; without internals, the whole attention in one kernel), fused and portable with the same weights:
    outputs and input/weight gradients agree within float32 bounds, so a model differentiated at inference
    (e.g. for saliency) gets the same gradients."""
    rng = np.random.default_rng(2)
    x = f32(rng.standard_normal((2, 9, 64)))
    res = ms.Tensor(f32(rng.standard_normal((2, 9, 64))))
    size = ms.Tensor(f32(rng.integers(1, 5, (2, 9))))
    with fused_cpu.disabled():
        portable = [Linear(64, 64), Linear(64, 64, gelu=GELU()), Attention(64, 4, prop_attn=True),
                    Attention(64, 4, prop_attn=True, internals=False)]
    fused = [Linear(64, 64), Linear(64, 64, gelu=GELU()), Attention(64, 4, prop_attn=True),
             Attention(64, 4, prop_attn=True, internals=False)]
    assert fused[0].fn_residual is not None and fused[1].fn_gelu is not None and fused[2].scores is not None
    assert fused[2].fused is not None and fused[3].fused is not None
    assert portable[0].fn is None and portable[2].scores is None and portable[3].fused is None
    for a, b, kind in zip(fused, portable, ("residual", "gelu", "internals", "attention")):
        for pa, pb in zip(a.trainable_params(), b.trainable_params()):
            pa.set_data(ms.Tensor(f32(rng.standard_normal(pa.shape) / 8)))
            pb.set_data(pa.data.copy())
        a, b = _Apply(a, kind, res, size), _Apply(b, kind, res, size)
        a.set_train(False)
        b.set_train(False)
        ya, yb = a(ms.Tensor(x)).asnumpy(), b(ms.Tensor(x)).asnumpy()
        assert np.abs(ya - yb).max() <= 256 * U32 * np.abs(yb).max(), kind
        weight = f32(rng.standard_normal(ya.shape))
        (dxa, dwa), (dxb, dwb) = _grads(a, x, weight), _grads(b, x, weight)
        assert np.abs(dxa.asnumpy() - dxb.asnumpy()).max() <= 256 * U32 * np.abs(dxb.asnumpy()).max(), kind
        for ga, gb in zip(dwa, dwb):
            assert np.abs(ga.asnumpy() - gb.asnumpy()).max() <= 256 * U32 * np.abs(gb.asnumpy()).max(), kind


class _Apply(nn.Cell):
    """One cell called as a block calls it at inference: Linear with the skip connection, fc1 with its GELU,
    Attention with the skip connection (its output, or with "internals" everything it returns, as flat rows)."""

    def __init__(self, cell, kind, residual, size):
        super().__init__()
        self.cell = cell
        self.kind = kind
        self.residual = residual
        self.size = size

    def construct(self, x):
        if self.kind == "residual":
            return self.cell(x, self.residual)
        if self.kind == "gelu":
            return self.cell(x)
        if self.kind == "internals":  # the output, the class token's probabilities, keys and values
            out, attn, k, v = self.cell(x, self.size, self.residual)
            b = out.shape[0]
            return ops.concat((out.reshape(b, -1), attn[:, :, 0].reshape(b, -1), k.reshape(b, -1), v.reshape(b, -1)), 1)
        return self.cell(x, self.size, self.residual)[0]
