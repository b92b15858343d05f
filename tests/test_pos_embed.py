"""Any input size: mindppt.models.pos_embed (the bicubic position-embedding resize) and the loader that applies
it when a checkpoint's patch grid differs from the model's.

* the resize against a direct NumPy bicubic written here (per output pixel, the 4x4 neighbourhood of
  PyTorch's formula) and against ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False,
  antialias=False)``: upsizing 14 -> 24, downsizing 14 -> 7, non-square grids, 2 prefix tokens;
* a DeiT-S checkpoint written at 224 px by torch loaded at 384 and 160 px: resized pos_embed, one log line,
  the token schedule and GMACs of the actual token count (577 tokens at 384);
* what cannot be resized is refused (non-grid token count, another width, other prefix tokens);
* parity at 384 px with the NumPy reference (tests/ppt_reference.py) given the pos_embed resized by the
  reference bicubic below: the loader's resize and the model checked together, dense and mixed.
"""
import contextlib
import logging
import math

import mindspore as ms
import numpy as np
import pytest
from checkpoint_helpers import TINY, model_params, to_torch, torch_save
from decision_checks import Run, assert_reference_parity, probe
from model_helpers import random_images
from ppt_reference import deit_config, random_deit_params, reference_forward
from tool_helpers import EVAL, run_tool

from mindppt.errors import CheckpointError
from mindppt.models import create_model
from mindppt.models.flops import block_macs, model_gmacs
from mindppt.models.pos_embed import resize_pos_embed, square_grid
from mindppt.models.weights import convert_state_dict

U32 = 2.0 ** -24
U64 = 2.0 ** -53
A = -0.75  # PyTorch's bicubic coefficient


# ---------------------------------------------------------------------------------------------------
# The reference: PyTorch's bicubic (align_corners=False, no antialias), one output pixel at a time
# ---------------------------------------------------------------------------------------------------

def tap_weights(t):
    """Weights of the taps at offsets -1, 0, 1, 2 from floor(x), for the fraction t = x - floor(x)."""
    def near(d):  # |d| <= 1
        return ((A + 2) * d - (A + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((A * d - 5 * A) * d + 8 * A) * d - 4 * A

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def tap_weight_slopes(t):
    """d/dt of :func:`tap_weights` (for the effect of a rounded sampling position)."""
    def near(d):
        return 3 * (A + 2) * d * d - 2 * (A + 3) * d

    def far(d):
        return 3 * A * d * d - 10 * A * d + 8 * A

    return [far(t + 1), near(t), -near(1 - t), -far(2 - t)]


def reference_bicubic(grid, out_h, out_w):
    """(C, h, w) -> (C, out_h, out_w) in float64: output pixel (i, j) samples the input at
    ((i + 0.5) h / out_h - 0.5, (j + 0.5) w / out_w - 0.5) from its 4x4 neighbourhood, indices clamped."""
    c, h, w = grid.shape
    grid = np.asarray(grid, np.float64)
    out = np.zeros((c, out_h, out_w))
    for i in range(out_h):
        y = (i + 0.5) * h / out_h - 0.5
        y0 = math.floor(y)
        wy = tap_weights(y - y0)
        for j in range(out_w):
            x = (j + 0.5) * w / out_w - 0.5
            x0 = math.floor(x)
            wx = tap_weights(x - x0)
            for m in range(4):
                for n in range(4):
                    yy = min(max(y0 - 1 + m, 0), h - 1)
                    xx = min(max(x0 - 1 + n, 0), w - 1)
                    out[:, i, j] += wy[m] * wx[n] * grid[:, yy, xx]
    return out


def reference_resize(pos_embed, new_grid, num_prefix_tokens=1, old_grid=None):
    """pos_embed (1, p + gh gw, C) -> (1, p + nh nw, C) float64, prefix rows copied."""
    pos_embed = np.asarray(pos_embed, np.float64)
    p, dim = num_prefix_tokens, pos_embed.shape[-1]
    if old_grid is None:
        side = math.isqrt(pos_embed.shape[1] - p)
        old_grid = (side, side)
    grid = pos_embed[0, p:].reshape(*old_grid, dim).transpose(2, 0, 1)
    resized = reference_bicubic(grid, *new_grid).transpose(1, 2, 0).reshape(1, -1, dim)
    return np.concatenate([pos_embed[:, :p], resized], axis=1)


# Over all fractions t: the largest sum of |tap weight| (1.375 at t = 0.5) and of |d weight / dt|.
_T = np.linspace(0.0, 1.0, 10001)
WEIGHT_SUM = float(np.max(np.sum(np.abs(tap_weights(_T)), axis=0)))
SLOPE_SUM = float(np.max(np.sum(np.abs(tap_weight_slopes(_T)), axis=0)))
HORNER_SUM = 36.0  # sum of |coefficient| * d^k of the far branch at d = 2 (the near branch's is 4.5)


def evaluation_bound(values, in_sizes, unit):
    """How far one evaluation of the resize in arithmetic of unit roundoff ``unit`` may be from the exact
    value: each tap weight is off by its Horner evaluation (6 roundings of at most HORNER_SUM) and by the
    rounded sampling position (i + 0.5) * scale - 0.5 (scale, product, difference: 4 units of the input
    size, through SLOPE_SUM); 4 weights per axis, 2 axes; then 32 roundings of the 16-term sum, whose
    |terms| add up to at most WEIGHT_SUM^2 max|x|."""
    weight_error = unit * (6 * HORNER_SUM + 4 * max(in_sizes) * SLOPE_SUM)
    return (2 * 4 * weight_error * WEIGHT_SUM + 32 * unit * WEIGHT_SUM ** 2) * float(np.abs(values).max())


def float64_bound(values, in_sizes):
    """Two float64 evaluations (ours and the reference, or torch's float64 kernel)."""
    return 2 * evaluation_bound(values, in_sizes, U64)


def float32_bound(values, in_sizes):
    """Ours (float64) against torch's float32 kernel (positions, weights and sums in float32)."""
    return evaluation_bound(values, in_sizes, U32) + evaluation_bound(values, in_sizes, U64)


def torch_resize(pos_embed, old_grid, new_grid, num_prefix_tokens, dtype):
    import torch
    import torch.nn.functional as F

    p, dim = num_prefix_tokens, pos_embed.shape[-1]
    grid = torch.from_numpy(np.ascontiguousarray(pos_embed[0, p:])).to(getattr(torch, dtype)).reshape(1, *old_grid, dim)
    out = F.interpolate(grid.permute(0, 3, 1, 2), size=tuple(new_grid), mode="bicubic", align_corners=False,
                        antialias=False)
    return out.permute(0, 2, 3, 1).reshape(-1, dim).double().numpy()


RESIZES = {  # old grid, new grid, prefix tokens
    "up_14_to_24": ((14, 14), (24, 24), 1),
    "down_14_to_7": ((14, 14), (7, 7), 1),
    "non_square_distilled": ((14, 14), (10, 20), 2),
    "non_square_both": ((6, 9), (13, 4), 1),
}


@pytest.mark.parametrize("case", list(RESIZES))
def test_resize_matches_direct_bicubic_and_torch(case):
    old_grid, new_grid, prefix = RESIZES[case]
    rng = np.random.default_rng(len(case))
    pos_embed = rng.standard_normal((1, prefix + old_grid[0] * old_grid[1], 16)).astype(np.float32)
    ours = resize_pos_embed(pos_embed, new_grid, old_grid if old_grid[0] != old_grid[1] else None, prefix)
    assert ours.dtype == np.float64 and ours.shape == (1, prefix + new_grid[0] * new_grid[1], 16)
    np.testing.assert_array_equal(ours[:, :prefix], pos_embed[:, :prefix])  # class / distillation tokens kept
    grid = ours[0, prefix:]
    reference = reference_resize(pos_embed, new_grid, prefix, old_grid)[0, prefix:]
    err_ref = np.abs(grid - reference).max()
    assert err_ref <= float64_bound(pos_embed, old_grid), case
    err_64 = np.abs(grid - torch_resize(pos_embed, old_grid, new_grid, prefix, "float64")).max()
    assert err_64 <= float64_bound(pos_embed, old_grid), case
    err_32 = np.abs(grid - torch_resize(pos_embed, old_grid, new_grid, prefix, "float32")).max()
    assert err_32 <= float32_bound(pos_embed, old_grid), case
    print(f"{case}: |ours - direct bicubic| {err_ref:.2e}, |ours - torch float64| {err_64:.2e} (bound "
          f"{float64_bound(pos_embed, old_grid):.1e}), |ours - torch float32| {err_32:.2e} (bound "
          f"{float32_bound(pos_embed, old_grid):.1e}), max|x| {np.abs(pos_embed).max():.2f}")


def test_same_grid_is_exact_and_bad_shapes_are_refused():
    pos_embed = np.random.default_rng(0).standard_normal((1, 2 + 35, 4))
    np.testing.assert_array_equal(resize_pos_embed(pos_embed, (5, 7), (5, 7), 2), pos_embed)
    assert square_grid(197, 1) == (14, 14) and square_grid(578, 2) == (24, 24)
    with pytest.raises(ValueError, match="196 positions are not 1 prefix token"):
        square_grid(196, 1)
    with pytest.raises(ValueError, match="not 2 prefix token"):
        resize_pos_embed(pos_embed, (6, 6), (6, 6), 2)


# ---------------------------------------------------------------------------------------------------
# The loader: checkpoints of another input size
# ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def resize_log():
    """The records of the loader's logger (whatever the ``mindppt`` logger's configuration)."""
    logger = logging.getLogger("mindppt.models.weights")
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def assert_resized(model, state, new_grid, prefix=1):
    """The model's pos_embed is the reference resize of the checkpoint's, to float32 rounding, the prefix
    rows exactly; every other parameter is the checkpoint's."""
    pos_embed = model.pos_embed.asnumpy()
    expected = reference_resize(state["pos_embed"], new_grid, prefix)
    assert pos_embed.shape == expected.shape
    np.testing.assert_array_equal(pos_embed[:, :prefix], state["pos_embed"][:, :prefix])
    old = math.isqrt(state["pos_embed"].shape[1] - prefix)
    bound = U32 * np.abs(expected) + float64_bound(state["pos_embed"], (old, old))  # float32 of a float64
    assert np.all(np.abs(pos_embed - expected) <= bound)
    params = model_params(model)
    for name, value in state.items():
        if name != "pos_embed":
            np.testing.assert_array_equal(params[name], value, err_msg=name)


def expected_gmacs(grid, schedule, dim=384, classes=1000):
    """Patch embedding (16x16x3 per patch), the blocks by ``schedule`` and the head, from flops.block_macs."""
    blocks = sum(block_macs(n_in, n_out, dim) for n_in, n_out in schedule)
    return (grid * grid * 3 * 16 * 16 * dim + blocks + dim * classes) / 1e9


@pytest.fixture(scope="module")
def small_224(tmp_path_factory):
    """A DeiT-S state at 224 px (its own random initialisation) written by torch.save, DeiT's layout."""
    state = model_params(create_model("deit_small_patch16_224"))
    path = tmp_path_factory.mktemp("pos_embed") / "deit_small_patch16_224.pth"
    torch_save({"model": to_torch(state)}, path)
    return path, state


# tokens entering each block of DeiT-S with r=50 at blocks 3, 6, 9
SCHEDULES = {
    384: (24, [577] * 4 + [527] * 3 + [477] * 3 + [427] * 2, [577, 527, 477, 427]),
    160: (10, [101] * 4 + [51] * 3 + [26] * 3 + [14] * 2, [101, 51, 26, 14]),  # r clamped to half: 25, 12
}


@pytest.mark.parametrize("img_size", list(SCHEDULES))
def test_224_checkpoint_at_another_size(small_224, img_size):
    path, state = small_224
    grid, tokens_in, after = SCHEDULES[img_size]
    with resize_log() as records:
        model = create_model("ppt_deit_small_patch16_224", img_size=img_size, checkpoint_path=str(path))
    assert_resized(model, state, (grid, grid))
    assert [r.getMessage() for r in records] == [
        f"checkpoint {path}: pos_embed resized from the 14x14 to the {grid}x{grid} patch grid of "
        f"ppt_deit_small_patch16_224 (bicubic), class token kept"]
    assert records[0].levelno == logging.INFO
    assert [n_in for n_in, _ in model.token_schedule] == tokens_in
    assert [model.token_schedule[0][0]] + [n_out for n_in, n_out in model.token_schedule if n_out < n_in] == after
    schedule = list(zip(tokens_in, tokens_in[1:] + tokens_in[-1:]))
    assert model_gmacs(model) == pytest.approx(expected_gmacs(grid, schedule), rel=1e-12)
    print(f"DeiT-S at {img_size} px: tokens {after}, PPT {model_gmacs(model):.4f} GMACs, dense "
          f"{expected_gmacs(grid, [(tokens_in[0], tokens_in[0])] * 12):.4f}")


def test_distilled_checkpoint_keeps_both_prefix_tokens(tmp_path):
    state = model_params(create_model("deit_tiny_distilled_patch16_224"))
    path = tmp_path / "deit_tiny_distilled.pth"
    torch_save({"model": to_torch(state)}, path)
    with resize_log() as records:
        model = create_model("deit_tiny_distilled_patch16_224", img_size=160, checkpoint_path=str(path))
    assert model.pos_embed.shape == (1, 2 + 100, 192)
    assert_resized(model, state, (10, 10), prefix=2)
    assert len(records) == 1 and records[0].getMessage().endswith("class and distillation tokens kept")


@pytest.fixture(scope="module")
def tiny_state():
    return model_params(create_model(TINY))


def test_what_cannot_be_resized_is_refused(tiny_state):
    tiny_384 = create_model(TINY, img_size=384)
    distilled = create_model("deit_tiny_distilled_patch16_224", img_size=160)
    odd = dict(tiny_state, pos_embed=tiny_state["pos_embed"][:, :196])  # no square grid
    wide = dict(tiny_state, pos_embed=np.zeros((1, 197, 384), np.float32), cls_token=np.zeros((1, 1, 384), np.float32))
    messages = {}
    for name, state, model in (("odd", odd, tiny_384), ("wide", wide, tiny_384), ("plain", tiny_state, distilled)):
        with resize_log() as records, pytest.raises(CheckpointError) as err:
            convert_state_dict(state, model, source=f"{name}.pth", model_name=f"{name}_model")
        assert not records, name
        messages[name] = str(err.value)
    assert messages["odd"] == ("checkpoint odd.pth: pos_embed (1, 196, 192) cannot be resized to the 24x24 patch "
                               "grid of odd_model: 196 positions are not 1 prefix token(s) plus a square patch grid")
    # another width: not resized, reported with the other mismatches; a plain checkpoint into a distilled
    # model: not resized, named as such
    assert "pos_embed: file (1, 197, 384) vs model (1, 577, 192)" in messages["wide"]
    assert "embed dim is 384" in messages["wide"]
    assert messages["plain"] == ("checkpoint plain.pth has no distillation token (dist_token, head_dist) and "
                                 "plain_model is a distilled DeiT; load it into a model without 'distilled' in its "
                                 "name (deit_*_patch16_224 or its ppt_ variant)")


# ---------------------------------------------------------------------------------------------------
# Parity at 384 px: the loader's resize and the model against the reference given the reference resize
# ---------------------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def at_384(tmp_path_factory):
    """DeiT-T-width weights written at 224 px, the reference's parameters with the pos_embed resized to
    24x24 by :func:`reference_resize`, two 384 px images, the dense reference run (with block 3's score
    variances, r = 0 there) and a threshold between the two images' variances."""
    params = random_deit_params(np.random.default_rng(7), num_classes=10, **deit_config("tiny"))
    path = tmp_path_factory.mktemp("parity_384") / "tiny_224.pth"
    torch_save({"model": to_torch(params)}, path)
    ref_params = dict(params, pos_embed=reference_resize(params["pos_embed"], (24, 24)))
    images = random_images(2, seed=3, size=384)
    dense = reference_forward(ref_params, images, num_heads=3, r_tokens=0, pp_loc_list=(3,))
    variance = dense[1][0]["variance"]
    return path, ref_params, images, dense[0], float(np.sqrt(variance[0] * variance[1]))


@pytest.mark.parametrize("case", ["dense", "mixed"])
def test_parity_at_384_with_resized_pos_embed(at_384, case):
    path, ref_params, images, dense_logits, split = at_384
    kwargs = dict(r_tokens=0) if case == "dense" else dict(r_tokens=50, pp_loc_list=(3, 6, 9), threshold=split)
    model = create_model("ppt_deit_tiny_patch16_224", img_size=384, num_classes=10, trace_source=True,
                         checkpoint_path=str(path), **kwargs)
    logits, infos = probe(model, images)
    if case == "dense":
        ref_logits, ref_infos, threshold = dense_logits, [], None
    else:
        threshold = split
        ref_logits, ref_infos = reference_forward(ref_params, images, num_heads=3, **kwargs)
        assert ref_infos[0]["pool"].tolist() in ([True, False], [False, True])
    ours = Run.from_model("mindppt", logits, infos, threshold)
    ref = Run.from_reference("reference", ref_logits, ref_infos, threshold)
    tokens = [model.token_schedule[0][0]] + [b["size"].shape[1] for b in infos]
    agree, _ = assert_reference_parity(f"384 px {case}, tokens {tokens}", ours, ref)
    assert model.token_schedule[0][0] == 577
    if case == "dense":
        assert agree.all()


def test_eval_tool_logs_the_resize_once(tiny_config, tmp_path):
    """The loader's line reaches a tool's log: weights saved at 16 px (4x4 patches) evaluated at 32 px."""
    ms.save_checkpoint(create_model("vit_digits_patch4_16", num_classes=3), str(tmp_path / "w16.ckpt"))
    result = run_tool(EVAL, "-c", tiny_config, "--ckpt_path", tmp_path / "w16.ckpt", "--image_resize", "32",
                      timeout=600)
    assert result.returncode == 0, result
    lines = [line for line in result.stdout.splitlines() if "pos_embed resized" in line]
    assert len(lines) == 1, result.stdout
    assert "from the 4x4 to the 8x8 patch grid" in lines[0] and "class token kept" in lines[0]
