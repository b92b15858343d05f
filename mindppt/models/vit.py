"""DeiT / ViT backbone with optional PPT compression, parameter names identical to timm's.

Written for graph mode on every backend: static shapes, and the op choices that measured fastest on
the CPU backend (patch embedding as one matmul, unstacked q/k/v, BatchMatMul attention).
"""
import math
import weakref

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import One, TruncatedNormal, Zero, initializer
from mindspore.common.seed import _get_graph_seed  # nn.Dropout's seeding (MindSpore is pinned)

from . import fused_cpu
from .phase_once import PhaseOnceCell
from .ppt import TokenCompression, effective_r


class _FusedLayerNorm(nn.Cell):
    """The fused CPU LayerNorm kernel with its own backward (float32 only)."""

    def __init__(self, kernels, eps):
        super().__init__()
        self.forward_kernel, self.backward_kernel = kernels
        self.eps = Tensor(np.array([eps], np.float32))

    def construct(self, x, weight, bias):
        return self.forward_kernel(x, weight, bias, self.eps)

    def bprop(self, x, weight, bias, out, dout):
        return self.backward_kernel(x, weight, self.eps, dout)


class _Float32Kernels:
    """Mixin of the cells that call the float32 CPU kernels. After ``to_float(float16 / bfloat16)``
    PyNative mode casts the inputs of every op in the cell, a kernel's included, so such a cell only uses
    its kernels while it computes in float32 (graph mode casts the cell's inputs instead, which the
    cells' dtype checks see)."""

    float32_kernels = True

    def _add_mixed_precision_flag(self, **flags):
        super()._add_mixed_precision_flag(**flags)
        if flags.get("fp16") or flags.get("bf16"):
            self.float32_kernels = False
        elif flags.get("fp32"):
            self.float32_kernels = True


class LayerNorm(_Float32Kernels, nn.Cell):
    """LayerNorm over the last axis with timm's parameter names (weight, bias). Float32 inputs on the
    CPU backend go through a fused kernel (:mod:`.fused_cpu`) when it can be built: MindSpore's CPU
    LayerNorm took 13% of a PPT DeiT-S forward."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = Parameter(initializer(One(), (dim,), ms.float32), name="weight")
        self.bias = Parameter(initializer(Zero(), (dim,), ms.float32), name="bias")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        kernels = fused_cpu.layer_norm_ops()
        self.fused = _FusedLayerNorm(kernels, eps) if kernels is not None else None

    def construct(self, x):
        if self.fused is not None and self.float32_kernels and x.dtype == ms.float32:
            return self.fused(x, self.weight, self.bias)
        y, _, _ = self.layer_norm(x, self.weight.astype(x.dtype), self.bias.astype(x.dtype))
        return y


class _UnaryKernel(nn.Cell):
    """A one-input CPU layout kernel as a cell. ``self_adjoint``: its gradient is the same kernel applied
    to the output's gradient (an axis swap); else the input gets no gradient (images)."""

    def __init__(self, kernel, self_adjoint):
        super().__init__()
        self.kernel = kernel
        self.self_adjoint = self_adjoint

    def construct(self, x):
        return self.kernel(x)

    def bprop(self, x, out, dout):
        if self.self_adjoint:
            return (self.kernel(dout),)
        return (ops.zeros_like(x),)


class PatchEmbed(_Float32Kernels, nn.Cell):
    """Non-overlapping patch projection. Holds a Conv2d's parameters (timm names and layout) but
    computes it as reshape + matmul, which is several times faster than the strided conv on CPU."""

    def __init__(self, img_size=224, patch_size=16, in_channels=3, embed_dim=768):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size,
                              pad_mode="valid", has_bias=True)
        self.matmul = ops.MatMul(transpose_b=True)
        linear = fused_cpu.linear_ops()
        self.linear = _PatchLinear(linear[0], fused_cpu.linear_grad_ops()) if linear is not None else None
        patchify = fused_cpu.patchify_op(patch_size)
        self.patchify = _UnaryKernel(patchify, self_adjoint=False) if patchify is not None else None

    def macs(self):
        """Multiply-accumulates of the projection for one image."""
        return self.num_patches * self.in_channels * self.patch_size ** 2 * self.embed_dim

    def construct(self, x):
        b = x.shape[0]
        p, g = self.patch_size, self.grid
        if self.patchify is not None and self.float32_kernels and x.dtype == ms.float32:
            x = self.patchify(x)
        else:
            x = x.reshape(b, self.in_channels, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
            x = x.reshape(b * self.num_patches, self.in_channels * p * p)
        if self.linear is not None and self.float32_kernels and x.dtype == ms.float32:
            x = self.linear(x, self.proj.weight, self.proj.bias)
        else:
            w = self.proj.weight.reshape(self.embed_dim, -1).astype(x.dtype)
            x = self.matmul(x, w) + self.proj.bias.astype(x.dtype)
        return x.reshape(b, self.num_patches, self.embed_dim)


class _FusedEmbedTokens(nn.Cell):
    """The CPU token-assembly kernel with its gradient: the patches get their rows, the prefix tokens and
    the position embedding the sums over the batch (a matmul with ones, as for the bias)."""

    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel
        self.matmul = ops.MatMul()

    def construct(self, x, prefix, pos):
        return self.kernel(x, prefix, pos)

    def bprop(self, x, prefix, pos, out, dout):
        b, t, c = dout.shape
        total = self.matmul(ops.ones((1, b), dout.dtype), dout.reshape(b, t * c)).reshape(1, t, c)
        k = prefix.shape[1]
        return dout[:, k:], total[:, :k], total


class TokenEmbedding(_Float32Kernels, nn.Cell):
    """The token sequence: the prefix tokens (1, K, C) (class, distillation) in front of the patch
    embeddings (B, P, C), plus the position embedding (1, K + P, C). One kernel on the CPU backend in
    float32 (:mod:`.fused_cpu`), else concat and add in ``x``'s dtype."""

    def __init__(self):
        super().__init__()
        kernel = fused_cpu.embed_tokens_op()
        self.fused = _FusedEmbedTokens(kernel) if kernel is not None else None

    def construct(self, x, prefix, pos):
        if self.fused is not None and self.float32_kernels and x.dtype == prefix.dtype == pos.dtype == ms.float32:
            return self.fused(x, prefix, pos)
        prefix = ops.broadcast_to(prefix.astype(x.dtype), (x.shape[0],) + prefix.shape[1:])
        return ops.concat((prefix, x), axis=1) + pos.astype(x.dtype)


class _RandomKeep(nn.Cell):
    """Base of Dropout and DropPath: a keep mask from ``UniformReal``, scaled by ``1 / keep_prob``.

    Not ``nn.Dropout``: MindSpore 2.10's CPU Dropout and Bernoulli kernels do not repeat their masks
    across same-seed processes when the machine is loaded (tests/test_dropout.py); ``UniformReal`` does.
    Seeds come from the global seed (``mindspore.set_seed``) as ``nn.Dropout``'s do: each cell draws its
    own stream, and the streams repeat after the same ``set_seed`` and the same build order."""

    def __init__(self, drop_prob):
        super().__init__()
        if not 0.0 <= float(drop_prob) < 1.0:
            raise ValueError(f"drop probability must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = float(drop_prob)
        self.keep_prob = 1.0 - self.drop_prob
        self.uniform = None
        if self.drop_prob > 0:
            seed, seed2 = _get_graph_seed(None, "mindppt_random_keep")
            self.uniform = ops.UniformReal(seed=seed, seed2=seed2)

    def keep_mask(self, shape, dtype):
        """1 / keep_prob with probability keep_prob, else 0."""
        return ops.floor(self.uniform(shape) + self.keep_prob).astype(dtype) / self.keep_prob


class Dropout(_RandomKeep):
    """Element-wise dropout (identity at inference or with p = 0)."""

    def construct(self, x):
        if self.uniform is None or not self.training:
            return x
        return x * self.keep_mask(x.shape, x.dtype)


class _ScaleSamples(nn.Cell):
    """The CPU kernel multiplying each sample by its factor, with its gradient for x (the factors come from
    a random draw and get none)."""

    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel

    def construct(self, x, scale):
        return self.kernel(x, scale)

    def bprop(self, x, scale, out, dout):
        return self.kernel(dout, scale), ops.zeros_like(scale)


class DropPath(_Float32Kernels, _RandomKeep):
    """Stochastic depth per sample (identity at inference or with p = 0). On the CPU backend float32 samples
    are scaled by a kernel (:mod:`.fused_cpu`) instead of a broadcasting ``Mul``."""

    def __init__(self, drop_prob):
        super().__init__(drop_prob)
        kernel = fused_cpu.scale_samples_op() if self.uniform is not None else None
        self.scale_samples = _ScaleSamples(kernel) if kernel is not None else None

    def construct(self, x):
        if self.uniform is None or not self.training:
            return x
        mask = self.keep_mask((x.shape[0], 1, 1), x.dtype)
        if self.scale_samples is not None and self.float32_kernels and x.dtype == ms.float32:
            return self.scale_samples(x, mask)
        return x * mask


class GELU(_Float32Kernels, nn.Cell):
    """Exact GELU, x * Phi(x), to within 1e-6 of the erf form, about 2.5 times as fast on CPU.

    MindSpore's CPU ``Erf`` kernel is slow (about three times a DeiT-S MLP matmul). Here
    ``Phi(x) = sigmoid(x * r(u))`` with ``u = (x / 4)^2`` and ``r`` a degree-6 polynomial: with
    ``z = x / sqrt(2)``, ``erf(z) = tanh(z * p(z^2))`` where ``p`` was fitted to ``atanh(erf(z)) / z`` on
    ``|z| <= 4`` (max error of erf 3.6e-7 in float32; the fp32 erf form itself is good to 4e-7 of the
    float64 GELU), and ``r(u) = 2 p(8u) / sqrt(2)``. ``r`` is at least 1.59 everywhere, so no clipping
    is needed: beyond the fitted range the sigmoid saturates on the right side (checked for |x| <= 40
    in float32, and overflow to inf gives the exact limits). The ``u`` scaling keeps every coefficient
    a normal fp16 number under AMP. The gradient ``Phi(x) + x * phi(x)`` is written out, which also keeps
    the training graph to primitives documented for Ascend, GPU and CPU (MindSpore's bprop of ``Erf``
    emits the Ascend-only ``PowTensorScalar``).

    On the CPU backend, float32 inputs go through a fused kernel of the same formula
    (:mod:`.fused_cpu`, one pass instead of ~17), when it can be built."""

    def __init__(self):
        super().__init__()
        fused = fused_cpu.gelu_ops()
        self.fused_forward, self.fused_backward = fused if fused is not None else (None, None)

    # coefficients of r, highest power of u first
    COEFFS = (7.360047148e-02, -3.118500723e-01, 5.491599010e-01, -4.645208734e-01, -1.464358091e-02,
              1.162512036e+00, 1.595772407e+00)

    def cdf(self, x):
        quarter = x * 0.25
        u = quarter * quarter
        poly = u * self.COEFFS[0] + self.COEFFS[1]
        for coeff in self.COEFFS[2:]:
            poly = poly * u + coeff
        return ops.sigmoid(x * poly)

    def construct(self, x):
        if self.fused_forward is not None and self.float32_kernels and x.dtype == ms.float32:
            return self.fused_forward(x)
        return x * self.cdf(x)

    def bprop(self, x, out, dout):
        if self.fused_backward is not None and self.float32_kernels and x.dtype == ms.float32:
            return (self.fused_backward(x, dout),)
        pdf = ops.exp(x * x * -0.5) * 0.3989422804014327
        return (dout * (self.cdf(x) + x * pdf),)


class _LinearFn(nn.Cell):
    """``x @ w^T + b``: the gemm kernel when given (:func:`.fused_cpu.linear_ops`; any leading axes), else
    MatMul and BiasAdd on rows. The gradients: the gemm kernels of :func:`.fused_cpu.linear_grad_ops` when
    given (``grads``), else MatMul, the bias gradient as a matmul with ones (MindSpore's CPU BiasAddGrad, a
    reduction over the rows, took 13% of a PPT DeiT-S training step)."""

    def __init__(self, kernel=None, grads=None):
        super().__init__()
        self.kernel = kernel
        self.input_grad_kernel, self.weight_grad_kernel = grads if grads is not None else (None, None)
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()
        self.grad_input = ops.MatMul()
        self.grad_weight = ops.MatMul(transpose_a=True)

    def construct(self, x, weight, bias):
        if self.kernel is not None:
            return self.kernel(x, weight, bias)
        return self.bias_add(self.matmul(x, weight), bias)

    def bprop(self, x, weight, bias, out, dout):
        if self.input_grad_kernel is not None:
            grad_weight, grad_bias = self.weight_grad_kernel(dout, x)
            return self.input_grad_kernel(dout, weight), grad_weight, grad_bias
        rows, grad = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
        ones = ops.ones((1, rows.shape[0]), dout.dtype)
        return (self.grad_input(grad, weight).reshape(x.shape), self.grad_weight(grad, rows),
                self.grad_input(ones, grad).reshape(bias.shape))


class _PatchLinear(_LinearFn):
    """The gemm kernel on the Conv2d's weight (N, C, P, P), read as the (N, C * P * P) it is in memory:
    MindSpore's Reshape of the weight copied it on every forward."""

    def bprop(self, x, weight, bias, out, dout):
        if self.input_grad_kernel is not None:  # the gradient kernels read the weight as (N, K) too
            dx, dw, db = super().bprop(x, weight, bias, out, dout)
        else:
            dx, dw, db = super().bprop(x, weight.reshape(weight.shape[0], -1), bias, out, dout)
        return dx, dw.reshape(weight.shape), db


class _LinearResidual(_LinearFn):
    """``residual + x @ w^T + b`` in one gemm kernel: a block's skip connection added in its projection's
    pass (inference, where drop path is the identity)."""

    def construct(self, x, weight, bias, residual):
        return self.kernel(x, weight, bias, residual)

    def bprop(self, x, weight, bias, residual, out, dout):
        return super().bprop(x, weight, bias, out, dout) + (dout,)


class _LinearGelu(_LinearFn):
    """``gelu(x @ w^T + b)`` in one gemm kernel (inference). Its gradient recomputes the pre-activation,
    which is why training takes the linear kernel and then the GELU, which keeps it."""

    def __init__(self, kernel, gelu, grads=None):
        super().__init__(kernel, grads)
        self.gelu = gelu

    def bprop(self, x, weight, bias, out, dout):
        pre = self.bias_add(self.matmul(x.reshape(-1, x.shape[-1]), weight), bias).reshape(out.shape)
        return super().bprop(x, weight, bias, out, self.gelu.bprop(pre, out, dout)[0])


class Linear(_Float32Kernels, nn.Dense):
    """``nn.Dense`` (same parameters, names and mixed-precision handling) with an optional GELU after
    the bias, in the layer's dtype (as ``nn.Dense(activation=...)``), and an optional ``residual`` added
    to the output (a block's skip connection, at inference). On the CPU backend, where the fused kernels
    are on (:mod:`.fused_cpu`), float32 inputs take the gemm kernels, with the bias, the residual or (at
    inference) the GELU in the same pass, and the bias gradient as a matmul."""

    def __init__(self, in_channels, out_channels, has_bias=True, gelu=None):
        super().__init__(in_channels, out_channels, has_bias=has_bias)
        self.gelu = gelu
        on_cpu = has_bias and fused_cpu.library_path() is not None
        kernels = fused_cpu.linear_ops() if on_cpu else None
        grads = fused_cpu.linear_grad_ops() if kernels is not None else None
        self.fn = _LinearFn(kernels[0] if kernels is not None else None, grads) if on_cpu else None
        self.fn_residual = _LinearResidual(kernels[1], grads) if kernels is not None and gelu is None else None
        self.fn_gelu = _LinearGelu(kernels[2], gelu, grads) if kernels is not None and gelu is not None else None

    def construct(self, x, residual=None):
        # The gemm kernels take the leading axes as they are: a Reshape pair and its shape arithmetic cost
        # MindSpore's compiler about 1 MB per layer (docs/performance.md, "What compiling a model costs").
        if self.fn is None or not self.float32_kernels or x.dtype != ms.float32:
            return self._portable(x, residual)
        if residual is None:
            if self.fn_gelu is not None and not self.training:
                return self.fn_gelu(x, self.weight, self.bias)
            return self._activate(self.fn(x, self.weight, self.bias))
        if self.fn_residual is not None and residual.dtype == ms.float32:
            return self.fn_residual(x, self.weight, self.bias, residual)
        return self._activate(self.fn(x, self.weight, self.bias)) + residual

    def _activate(self, x):
        if self.gelu is not None:
            return self.gelu(x)
        return x

    def _portable(self, x, residual):
        shape = x.shape
        x = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        if self.has_bias:
            x = self.bias_add(x, self.bias)
        x = self._activate(x).reshape(shape[:-1] + (x.shape[-1],))
        if residual is not None:
            return x + residual
        return x


class Mlp(nn.Cell):
    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.act = GELU()
        self.fc1 = Linear(dim, hidden_dim, gelu=self.act)  # the GELU runs inside fc1
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = Dropout(drop)

    def construct(self, x, residual=None):
        """``residual``: added to the output (inference, where dropout is the identity)."""
        if residual is None:
            return self.drop(self.fc2(self.drop(self.fc1(x))))
        return self.fc2(self.fc1(x), residual)


class _FusedSplitQkv(nn.Cell):
    """The CPU head-split kernel: (B, N, 3C) -> q * scale, k, v (B, H, N, D), with its gradient."""

    def __init__(self, kernels, scale):
        super().__init__()
        self.forward_kernel, self.backward_kernel = kernels
        self.scale = Tensor(np.array([scale], np.float32))

    def construct(self, qkv):
        return self.forward_kernel(qkv, self.scale)

    def bprop(self, qkv, out, dout):
        return (self.backward_kernel(dout[0], dout[1], dout[2], self.scale),)


class _AttentionScores(nn.Cell):
    """``q @ k^T`` per (batch, head) in one gemm kernel: (B, H, N, D), (B, H, M, D) -> (B, H, N, M); its
    gradient in another."""

    def __init__(self, kernel, grad_kernel):
        super().__init__()
        self.kernel, self.grad_kernel = kernel, grad_kernel

    def construct(self, q, k):
        return self.kernel(q, k)

    def bprop(self, q, k, out, dout):
        dq, dk = self.grad_kernel(dout, q, k)
        return dq, dk


class _AttentionValues(nn.Cell):
    """``attn @ v`` per (batch, head) in one gemm kernel that writes the heads merged: (B, H, N, M),
    (B, H, M, D) -> (B, N, H * D); its gradient in another, which reads the heads where they are."""

    def __init__(self, kernel, grad_kernel):
        super().__init__()
        self.kernel, self.grad_kernel = kernel, grad_kernel

    def construct(self, attn, v):
        return self.kernel(attn, v)

    def bprop(self, attn, v, out, dout):
        dattn, dv = self.grad_kernel(dout, attn, v)
        return dattn, dv


class _FusedAttention(nn.Cell):
    """Attention at inference in one kernel from the qkv projection (B, N, 3C) to the merged heads (B, N, C)
    (:func:`.fused_cpu.fused_attention_ops`); with ``internals`` also the class token's probabilities
    (B, H, 1, N), the head-summed keys (B, N, D) and the value norms (B, N). Its gradient recomputes the
    attention with the split, scores, softmax and values cells and runs their backward passes (a model
    differentiated at inference); the keys and norms get none (they only feed discrete decisions)."""

    def __init__(self, kernels, setting, prop_attn, internals, split_qkv, scores, softmax, values):
        super().__init__()
        self.kernel, self.size_kernel = kernels
        self.prop_attn = prop_attn
        self.internals = internals
        self.setting = setting
        self.split_qkv, self.scores, self.softmax, self.values = split_qkv, scores, softmax, values

    def construct(self, qkv, size):
        if self.prop_attn:
            return self.size_kernel(qkv, size, self.setting)
        return self.kernel(qkv, self.setting)

    def bprop(self, qkv, size, out, dout):
        q, k, v = self.split_qkv(qkv)
        logits = self.scores(q, k)
        attn = self.softmax(logits, size)
        dattn, dv = self.values.bprop(attn, v, out, dout[0] if self.internals else dout)
        if self.internals:  # the class token's probabilities are an output too
            dattn = ops.concat((dattn[:, :, :1] + dout[1], dattn[:, :, 1:]), axis=2)
        dlogits, _ = self.softmax.bprop(logits, size, attn, dattn)
        dq, dk = self.scores.bprop(q, k, logits, dlogits)
        return self.split_qkv.bprop(qkv, (q, k, v), (dq, dk, dv))[0], ops.zeros_like(size)


class Attention(nn.Cell):
    """Multi-head self-attention; with ``prop_attn`` the logits get ``log(size_j)`` (ToMe/PPT).

    Returns the output and what the compression cell reads: the softmaxed attention (at inference on the
    fused CPU path, where the attention runs as one kernel, only the class token's row, (B, H, 1, N)), each
    token's key summed over the heads (B, N, D) and its value norm over all heads (B, N), float32 and
    without gradient (see :meth:`keys_and_value_norms`). With ``internals=False`` (a block without
    compression) the keys and norms are None, and so is the attention at inference."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, prop_attn=False,
                 internals=True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.prop_attn = prop_attn
        self.qkv = Linear(dim, dim * 3, has_bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.attn_drop = Dropout(attn_drop)
        self.proj_drop = Dropout(proj_drop)
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.av = ops.BatchMatMul()
        self.softmax = Softmax(prop_attn=prop_attn)
        split, swap = fused_cpu.split_qkv_ops(num_heads), fused_cpu.swap_axes_op()
        self.split_qkv = _FusedSplitQkv(split, self.scale) if split is not None else None
        self.merge_heads = _UnaryKernel(swap, self_adjoint=True) if swap is not None else None
        gemm = fused_cpu.attention_ops() if split is not None else None
        self.scores = _AttentionScores(gemm[0], gemm[2]) if gemm is not None else None
        self.values = _AttentionValues(gemm[1], gemm[3]) if gemm is not None else None
        self.internals = internals
        self.setting = Tensor(np.array([num_heads, self.scale], np.float32))
        self.summarise = fused_cpu.keys_and_value_norms_op(num_heads) if internals else None
        self.sum_heads = ops.BatchMatMul()
        self.matmul = ops.MatMul()
        whole = fused_cpu.fused_attention_ops(num_heads, internals) if gemm is not None else None
        self.fused = None
        if whole is not None and self.softmax.fused is not None:
            self.fused = _FusedAttention(whole, self.setting, self.prop_attn, internals, self.split_qkv,
                                         self.scores, self.softmax.fused, self.values)

    def keys_and_value_norms(self, qkv, k, v):
        """Per token the key summed over the heads (B, N, D) (ToMe's pooling metric; the mean's 1 / H cancels
        in its normalisation) and the value norm over all heads (B, N), float32 and without gradient: the
        compression only makes discrete choices from them. From the qkv projection in one kernel on the CPU
        backend; otherwise the sums over heads and over the head dimension as products with ones (CPU
        ReduceSum over an axis took 9x longer)."""
        if self.summarise is not None and qkv.dtype == ms.float32:
            keys, norms = self.summarise(qkv, self.setting)
        else:
            b, heads, n, head_dim = k.shape
            ones = ops.ones((b, 1, heads), ms.float32)
            keys = self.sum_heads(ones, k.astype(ms.float32).reshape(b, heads, n * head_dim)).reshape(b, n, head_dim)
            v32 = v.astype(ms.float32)
            squares = self.matmul((v32 * v32).reshape(b * heads * n, head_dim), ops.ones((head_dim, 1), ms.float32))
            norms = ops.sqrt(self.sum_heads(ones, squares.reshape(b, heads, n)).reshape(b, n))
        return ops.stop_gradient(keys), ops.stop_gradient(norms)

    def construct(self, x, size, residual=None):
        """``residual``: added to the output (inference, where dropout is the identity)."""
        qkv = self.qkv(x)
        if (self.fused is not None and not self.training and qkv.dtype == ms.float32
                and self.softmax.float32_kernels):
            attn = keys = norms = None
            if self.internals:
                out, attn, keys, norms = self.fused(qkv, size)
            else:
                out = self.fused(qkv, size)
            if residual is None:
                return self.proj_drop(self.proj(out)), attn, keys, norms
            return self.proj(out, residual), attn, keys, norms
        # step by step (training, and where the whole-attention kernel is not used); not in a method of its
        # own, whose inputs a float32 shell's mixed-precision flag would cast (pin_ppt_precision)
        b, n, c3 = qkv.shape
        fused = self.split_qkv is not None and qkv.dtype == ms.float32
        if fused:
            q, k, v = self.split_qkv(qkv)
        else:
            by_head = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = ops.unstack(by_head, 0)
            q = q * self.scale
        keys = norms = None
        if self.internals:
            keys, norms = self.keys_and_value_norms(qkv, k, v)
        gemm = fused and self.scores is not None
        logits = self.scores(q, k) if gemm else self.qk(q, k)
        attn = self.softmax(logits, size)
        if gemm:
            out = self.values(self.attn_drop(attn), v)
        else:
            out = self.av(self.attn_drop(attn), v)
            if fused and out.dtype == ms.float32:
                out = self.merge_heads(out).reshape(b, n, c3 // 3)
            else:
                out = out.transpose(0, 2, 1, 3).reshape(b, n, c3 // 3)
        if residual is None:
            return self.proj_drop(self.proj(out)), attn, keys, norms
        return self.proj(out, residual), attn, keys, norms


class _FusedSoftmax(nn.Cell):
    """The fused CPU softmax kernel (float32 only), optionally adding the log of per-key sizes (B, N)
    first; sizes get no gradient (they come from discrete decisions)."""

    def __init__(self, kernels, prop_attn):
        super().__init__()
        self.forward_kernel, self.size_forward_kernel, self.backward_kernel = kernels
        self.prop_attn = prop_attn

    def construct(self, x, size):
        if self.prop_attn:
            return self.size_forward_kernel(x, size)
        return self.forward_kernel(x)

    def bprop(self, x, size, out, dout):
        return self.backward_kernel(out, dout), ops.zeros_like(size)


class Softmax(_Float32Kernels, nn.Cell):
    """Softmax over the last axis of attention logits (B, H, N, N). With ``prop_attn`` (proportional
    attention) ``log(size)`` of the per-key sizes (B, N) is added first, in float32 (sizes are integers
    up to N and must not round); otherwise ``size`` is ignored. On the CPU backend float32 logits go
    through one fused kernel (:mod:`.fused_cpu`) instead of a log, a cast, an add, a cast and
    MindSpore's softmax."""

    def __init__(self, prop_attn=False):
        super().__init__()
        self.prop_attn = bool(prop_attn)
        self.softmax = ops.Softmax(axis=-1)
        kernels = fused_cpu.softmax_ops()
        self.fused = _FusedSoftmax(kernels, self.prop_attn) if kernels is not None else None

    def construct(self, x, size):
        if self.fused is not None and self.float32_kernels and x.dtype == ms.float32:
            return self.fused(x, size)
        if self.prop_attn:
            b, n = size.shape
            x = (x.astype(ms.float32) + ops.log(size).reshape(b, 1, 1, n)).astype(x.dtype)
        return self.softmax(x)


class Block(nn.Cell):
    """Pre-norm transformer block; ``compression`` (a TokenCompression or None) runs between the
    attention and MLP residuals. ``skip_lam`` divides both residual branches (LV-ViT's residual
    scaling; 1 for ViT/DeiT, where the division is skipped)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, prop_attn=False, compression=None, norm_eps=1e-6, skip_lam=1.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, prop_attn, internals=compression is not None)
        self.drop_path = DropPath(drop_path)
        self.compression = compression
        self.norm2 = LayerNorm(dim, norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.skip_lam = float(skip_lam)

    def residual(self, branch):
        if self.skip_lam == 1.0:
            return self.drop_path(branch)
        return self.drop_path(branch) / self.skip_lam

    def construct(self, x, size, source):
        # at inference drop path and dropout are the identity: the skip connections go into the
        # projections' gemm kernels (one pass less over the tokens each)
        fuse = not self.training and self.skip_lam == 1.0
        if fuse:
            x, attn, keys, norms = self.attn(self.norm1(x), size, x)
        else:
            out, attn, keys, norms = self.attn(self.norm1(x), size)
            x = x + self.residual(out)
        info = None
        if self.compression is not None:
            x, size, source, info = self.compression(x, attn, keys, norms, size, source)
        if fuse:
            x = self.mlp(self.norm2(x), x)
        else:
            x = x + self.residual(self.mlp(self.norm2(x)))
        return x, size, source, info


def normalise_thresholds(threshold, compression_blocks):
    """One threshold per compression block: a number applies to every block, a sequence must have one
    value per block of ``compression_blocks``."""
    blocks = list(compression_blocks)
    if isinstance(threshold, (list, tuple, np.ndarray)):
        values = [float(t) for t in threshold]
        if len(values) != len(blocks):
            raise ValueError(f"threshold as a list needs one value per compression block ({len(blocks)}: blocks "
                             f"{blocks}), got {len(values)}: {list(threshold)}")
    else:
        values = [float(threshold)] * len(blocks)
    if any(math.isnan(t) or t < 0 for t in values):
        raise ValueError(f"threshold must be >= 0 (0 = always prune, inf = always pool), got {threshold}")
    return values


def normalise_r_tokens(r_tokens, depth, pp_loc_list):
    """Per-block list of tokens to remove: an int applies to every block in ``pp_loc_list``."""
    pp_loc_list = tuple(int(i) for i in pp_loc_list)
    for i in pp_loc_list:
        if not 0 <= i < depth:
            raise ValueError(f"pp_loc_list entry {i} is out of range: blocks are 0..{depth - 1}")
    if isinstance(r_tokens, (list, tuple)):
        if len(r_tokens) != depth:
            raise ValueError(f"r_tokens as a list needs one entry per block ({depth}), got {len(r_tokens)}")
        values = [int(r) for r in r_tokens]
    else:
        values = [int(r_tokens)] * depth
    if any(r < 0 for r in values):
        raise ValueError(f"r_tokens must be >= 0, got {r_tokens}")
    return [values[i] if i in pp_loc_list else 0 for i in range(depth)]


def token_schedule(num_tokens, r_per_block, num_protected=1):
    """``[(tokens in, tokens out)]`` of each block when block ``i`` is asked to remove ``r_per_block[i]``
    tokens: each removes :func:`effective_r` of its input, so a large r is clamped block by block."""
    schedule = []
    for r in r_per_block:
        schedule.append((num_tokens, num_tokens - effective_r(num_tokens, r, num_protected)))
        num_tokens = schedule[-1][1]
    return schedule


class VisionTransformer(PhaseOnceCell):
    """timm-compatible DeiT/ViT (class token, learned position embedding) with PPT compression in
    the blocks of ``pp_loc_list``. ``r_tokens=0`` gives the dense model. ``threshold``: one number for
    every compression block, or one value per compression block.

    ``distilled``: DeiT's distillation token (``dist_token``, position 1) and second head (``head_dist``);
    both tokens are protected from compression and the output is the mean of the two heads (DeiT's
    inference; :meth:`forward_heads` gives both for distillation training). ``embed_layer`` builds the
    patch embedding (``PatchEmbed``'s signature; LV-ViT passes its convolutional stem)."""

    def __init__(self, img_size=224, patch_size=16, in_channels=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, r_tokens=0, pp_loc_list=(3, 6, 9),
                 threshold=7e-5, prop_attn=True, trace_source=False, distilled=False, norm_eps=1e-6,
                 skip_lam=1.0, embed_layer=PatchEmbed):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.img_size = img_size
        self.trace_source = bool(trace_source)
        self.distilled = bool(distilled)
        self.num_prefix_tokens = 2 if self.distilled else 1
        self.patch_embed = embed_layer(img_size, patch_size, in_channels, embed_dim)
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.num_original_tokens = num_tokens
        self.cls_token = Parameter(initializer(TruncatedNormal(0.02), (1, 1, embed_dim), ms.float32),
                                   name="cls_token")
        if self.distilled:
            self.dist_token = Parameter(initializer(TruncatedNormal(0.02), (1, 1, embed_dim), ms.float32),
                                        name="dist_token")
        self.pos_embed = Parameter(initializer(TruncatedNormal(0.02), (1, num_tokens, embed_dim), ms.float32),
                                   name="pos_embed")
        self.embed_tokens = TokenEmbedding()
        self.pos_drop = Dropout(drop_rate)

        self.pp_loc_list = tuple(int(i) for i in pp_loc_list)
        self.r_per_block = normalise_r_tokens(r_tokens, depth, pp_loc_list)
        self.token_schedule = token_schedule(num_tokens, self.r_per_block, self.num_prefix_tokens)
        thresholds = dict(zip(self.compression_blocks, normalise_thresholds(threshold, self.compression_blocks)))
        drop_path = np.linspace(0, drop_path_rate, depth).tolist()
        blocks = []
        sizes_vary = False  # sizes stay 1 (log 0) until the first compression
        for i, (n_in, n_out) in enumerate(self.token_schedule):
            compression = None
            if i in thresholds:
                compression = TokenCompression(n_in, n_in - n_out, thresholds[i], trace_source,
                                               self.num_prefix_tokens)
            blocks.append(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                drop_path[i], prop_attn and sizes_vary, compression, norm_eps, skip_lam))
            sizes_vary = sizes_vary or compression is not None
        self.blocks = nn.CellList(blocks)
        self.norm = LayerNorm(embed_dim, norm_eps)
        self.head_drop = Dropout(drop_rate)
        self.head = Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if self.distilled:
            self.head_dist = Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Dense):
                cell.weight.set_data(initializer(TruncatedNormal(0.02), cell.weight.shape, cell.weight.dtype))
                if cell.bias is not None:
                    cell.bias.set_data(initializer(Zero(), cell.bias.shape, cell.bias.dtype))

    def schedule_with(self, r_tokens, pp_loc_list=None):
        """The token schedule this architecture has with ``r_tokens`` at ``pp_loc_list`` (None: this
        model's blocks), without building that model."""
        blocks = self.pp_loc_list if pp_loc_list is None else pp_loc_list
        return token_schedule(self.num_original_tokens, normalise_r_tokens(r_tokens, self.depth, blocks),
                              self.num_prefix_tokens)

    @property
    def compression_blocks(self):
        return [i for i, (n_in, n_out) in enumerate(self.token_schedule) if n_out < n_in]

    @property
    def thresholds(self):
        """The prune/pool threshold of each compression block (in block order)."""
        return [self.blocks[i].compression.threshold for i in self.compression_blocks]

    def set_threshold(self, threshold):
        """Change the prune/pool threshold (e.g. 6e-5 to train, 7e-5 to evaluate): a number for every
        compression block, or one value per compression block. The threshold is a (non-trainable)
        Parameter, so compiled graphs see the new value without recompiling."""
        blocks = self.compression_blocks
        for i, value in zip(blocks, normalise_thresholds(threshold, blocks)):
            self.blocks[i].compression.threshold = value

    def head_macs(self, tokens_out=None):
        """Multiply-accumulates of the classifier head(s) for one image (``tokens_out``: the tokens left
        after the last block, default this model's)."""
        return (2 if self.distilled else 1) * self.embed_dim * max(self.num_classes, 0)

    def forward_features(self, x):
        x = self.patch_embed(x)
        b = x.shape[0]
        prefix = ops.concat((self.cls_token, self.dist_token), axis=1) if self.distilled else self.cls_token
        x = self.pos_drop(self.embed_tokens(x, prefix, self.pos_embed))
        size = ops.ones((b, self.num_original_tokens), ms.float32)
        source = None
        if self.trace_source:
            eye = ops.eye(self.num_original_tokens, self.num_original_tokens, ms.float32)
            source = ops.broadcast_to(eye.expand_dims(0), (b, self.num_original_tokens, self.num_original_tokens))
        infos = ()
        for blk in self.blocks:
            x, size, source, info = blk(x, size, source)
            if info is not None:
                infos = infos + (info,)
        return self.norm(x), infos

    def forward_heads(self, x):
        """Class-head and distillation-head logits of a distilled model's features."""
        return self.head(self.head_drop(x[:, 0])), self.head_dist(self.head_drop(x[:, 1]))

    def forward_head(self, x):
        if self.distilled:
            cls_logits, dist_logits = self.forward_heads(x)
            return (cls_logits + dist_logits) / 2
        return self.head(self.head_drop(x[:, 0]))

    def construct(self, x):
        x, _ = self.forward_features(x)
        return self.forward_head(x)


class CompressionInspector(nn.Cell):
    """Wraps a model so one (graph-mode) call returns the logits and, per compression block,
    ``(variance, pooled, size, kept, source)``."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)  # the model's parameters keep their names (checkpoints stay loadable)
        self.model = model

    def construct(self, x):
        features, infos = self.model.forward_features(x)
        if not self.model.trace_source:
            # Without source maps, return 4-tuples: a None inside the output would make MindSpore run
            # the graph through its dynamic-type actor, which cannot re-infer Custom (fused) ops.
            trimmed = ()
            for info in infos:
                trimmed = trimmed + (info[:4],)
            infos = trimmed
        return self.model.forward_head(features), infos


_INSPECTORS = weakref.WeakKeyDictionary()  # one wrapper per model, so its graph is compiled once


def inspect_compression(model, images):
    """Run ``model`` on ``images`` and return (logits, list of per-block dicts of numpy arrays)."""
    inspector = _INSPECTORS.get(model)
    if inspector is None:
        inspector = _INSPECTORS[model] = CompressionInspector(model)
    inspector.set_train(False)
    if not isinstance(images, Tensor):
        images = Tensor(np.asarray(images, np.float32))
    logits, infos = inspector(images)
    keys = ("variance", "pooled", "size", "kept", "source")
    blocks = model.compression_blocks
    out = []
    for block, info in zip(blocks, infos):
        entry = {"block": block}
        for key, value in zip(keys, info):
            entry[key] = value.asnumpy()
        entry.setdefault("source", None)
        out.append(entry)
    return logits.asnumpy(), out
