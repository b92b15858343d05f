"""Position embeddings for another input size: the patch-grid part resized bicubically, the prefix tokens
(class, distillation) kept as they are.

The interpolation is the one DeiT's fine-tuning at 384 px and timm's checkpoint filter (before timm 0.9
switched on antialiasing) apply: PyTorch's ``F.interpolate(mode="bicubic", align_corners=False,
antialias=False)`` on the (C, gh, gw) grid. That is Keys' cubic convolution with a = -0.75, output pixel
i reading the input at ``(i + 0.5) * in / out - 0.5`` (half-pixel centres, not clamped), taps outside the
grid repeating the border. The kernel is separable, so it is computed as one (out x in) matrix per axis,
in float64.
"""
import math

import numpy as np

__all__ = ["CUBIC_A", "cubic_kernel", "bicubic_matrix", "square_grid", "resize_pos_embed"]

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic coefficient


def cubic_kernel(distance, a=CUBIC_A):
    """Keys' cubic convolution kernel at ``distance`` (array), zero from 2 on."""
    x = np.abs(np.asarray(distance, np.float64))
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(in_size, out_size):
    """The (out_size, in_size) float64 matrix of one axis: ``out = M @ in``. Equal sizes give the identity."""
    dst = np.arange(out_size)
    src = (dst + 0.5) * (in_size / out_size) - 0.5
    base = np.floor(src)
    frac = src - base
    matrix = np.zeros((out_size, in_size))
    for offset in (-1, 0, 1, 2):
        tap = np.clip(base + offset, 0, in_size - 1).astype(np.int64)  # border repeated
        np.add.at(matrix, (dst, tap), cubic_kernel(frac - offset))
    return matrix


def square_grid(num_positions, num_prefix_tokens):
    """(g, g) for ``num_positions = num_prefix_tokens + g * g``; ValueError for any other count."""
    patches = num_positions - num_prefix_tokens
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise ValueError(f"{num_positions} positions are not {num_prefix_tokens} prefix token(s) plus a square "
                         f"patch grid")
    return side, side


def resize_pos_embed(pos_embed, new_grid, old_grid=None, num_prefix_tokens=1):
    """``pos_embed`` (1, prefix + gh * gw, C) laid out over the ``old_grid`` (gh, gw) in row-major order
    (timm's) -> (1, prefix + nh * nw, C) over ``new_grid`` (nh, nw), in float64. ``old_grid`` defaults to
    the square grid of the token count. The first ``num_prefix_tokens`` rows are copied unchanged."""
    pos_embed = np.asarray(pos_embed, np.float64)
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, tokens, dim), got {pos_embed.shape}")
    _, num_positions, dim = pos_embed.shape
    if old_grid is None:
        old_grid = square_grid(num_positions, num_prefix_tokens)
    (gh, gw), (nh, nw) = tuple(old_grid), tuple(new_grid)
    if num_prefix_tokens + gh * gw != num_positions:
        raise ValueError(f"pos_embed has {num_positions} positions, not {num_prefix_tokens} prefix token(s) plus "
                         f"a {gh}x{gw} grid")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:].reshape(gh, gw, dim)
    rows = (bicubic_matrix(gh, nh) @ grid.reshape(gh, gw * dim)).reshape(nh, gw, dim)
    resized = np.einsum("jx,ixc->ijc", bicubic_matrix(gw, nw), rows)
    return np.concatenate([prefix, resized.reshape(1, nh * nw, dim)], axis=1)
