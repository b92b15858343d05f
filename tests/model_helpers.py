"""Helpers shared by model tests."""
import math

import mindspore as ms
import numpy as np
from mindspore import nn

U32 = 2.0 ** -24  # unit roundoff of float32
U16 = 2.0 ** -11  # unit roundoff of float16


def sharpen_attention(model, factor=4.0):
    """Scale the q/k/v projections of a randomly initialised model so its attention is as peaked as a
    trained DeiT's (score variances around 1e-4, the paper's threshold range) instead of almost
    uniform. Near-uniform scores have near-ties whose order float rounding decides."""
    for name, param in model.parameters_and_names():
        if name.endswith("attn.qkv.weight"):
            param.set_data(ms.Tensor(param.asnumpy() * factor))
    return model


def random_images(n, seed=0, size=224):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# GELU: the exact function and what a float32 evaluation of mindppt's formula may deviate from it
# --------------------------------------------------------------------------------------------

# mindppt.models.vit.GELU is x * Phi(x) with Phi(x) = sigmoid(x * r((x / 4)^2)), fitted so that erf is
# within 3.6e-7, i.e. Phi within 1.8e-7, for |x| <= 4 sqrt(2); beyond, Phi saturates to within 1e-8.
PHI_APPROX_ERR = 1.8e-7
PHI_FIT_RANGE = 4 * math.sqrt(2)
# Rounding allowance on Phi, in float32 ulps (absolute: Phi <= 1), whatever the vectorisation:
# the fused kernel (polynomial, exp, reciprocal; with or without FMA contraction) measures <= 3;
# MindSpore's element-wise ops (the portable GELU, nn.GELU) measure <= 16, their Sigmoid's exp being a
# 5th-order polynomial with a truncated ln 2 (the same instructions and constants in nnacl's AVX, AVX2
# and AVX-512 paths). Bounds: ~2-3x measured.
FUSED_PHI_ULPS = 8
MINDSPORE_PHI_ULPS = 32
GELU_GRAD_ATOL = PHI_APPROX_ERR + 32 * U32  # dGELU = Phi + x phi(x) is O(1); measured <= 3e-7 + 16 ulps
FP16_GELU_TOL = 4 * U16  # fp16 GELU (every op rounds to fp16): |y - exact| <= tol * (|y| + 1); measured 1.4 u16


def exact_gelu(x):
    x = np.asarray(x, np.float64)
    return x * 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2))


def exact_gelu_grad(x):
    x = np.asarray(x, np.float64)
    return 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2)) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def gelu_tolerance(x, phi_ulps=FUSED_PHI_ULPS):
    """Bound on |GELU(x) - exact| for a float32 evaluation of mindppt's formula: |x| times Phi's error
    (the formula's own, within the fitted range, plus ``phi_ulps`` of rounding), plus the final
    product's rounding. Relative to float32's precision everywhere, so it is as tight at 1e-30 as at 40."""
    ax = np.abs(np.asarray(x, np.float64))
    return ax * (PHI_APPROX_ERR * (ax <= PHI_FIT_RANGE) + phi_ulps * U32) + 2 * U32 * np.abs(exact_gelu(x))


def assert_gelu_close(actual, x, phi_ulps=FUSED_PHI_ULPS, what="GELU"):
    x = np.asarray(x, np.float64)
    err = np.abs(np.asarray(actual, np.float64) - exact_gelu(x))
    tol = gelu_tolerance(x, phi_ulps)
    worst = int(np.argmax(err - tol))
    assert np.all(err <= tol), f"{what}: at x = {x[worst]!r} error {err[worst]:.3g} > bound {tol[worst]:.3g}"


class SumOf(nn.Cell):
    """``(cell(x) * weight).sum()``: a scalar whose gradient is ``weight`` pulled back through ``cell``."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, x, weight):
        return (self.cell(x) * weight).sum()
