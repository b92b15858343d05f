"""Model behaviour in GRAPH_MODE: registry, token schedule, per-image policy on mixed batches,
size and source bookkeeping, and gradients through the compression."""
import mindspore as ms
import numpy as np
import pytest
from decision_checks import FP32_SCORE_RTOL, FP32_SIM_ATOL, Run, compare_runs, probe, stack_images
from mindspore import nn
from model_helpers import (
    FP16_GELU_TOL,
    FUSED_PHI_ULPS,
    GELU_GRAD_ATOL,
    MINDSPORE_PHI_ULPS,
    assert_gelu_close,
    exact_gelu,
    exact_gelu_grad,
    random_images,
    sharpen_attention,
)

from mindppt.engine.build import r_clamps, warn_clamped_r_tokens
from mindppt.models import create_model, inspect_compression, list_models
from mindppt.models.flops import model_gmacs


def test_registry_lists_every_variant():
    sizes = ("tiny", "small", "base")
    dense = ([f"deit_{size}_patch16_224" for size in sizes] + [f"deit_{size}_distilled_patch16_224" for size in sizes]
             + [f"vit_{size}_patch16_224" for size in sizes] + ["deit_base_patch16_384", "vit_digits_patch4_16",
                                                                 "lvvit_s"])
    assert list_models() == sorted(dense + [f"ppt_{name}" for name in dense])
    with pytest.raises(ValueError, match="ppt_deit_small_patch16_224"):
        create_model("ppt_deit_smal_patch16_224")


def test_parameter_names_follow_timm():
    model = create_model("deit_tiny_patch16_224", num_classes=10)
    params = {name: p.shape for name, p in model.parameters_and_names()}
    assert params["patch_embed.proj.weight"] == (192, 3, 16, 16)
    assert params["blocks.0.attn.qkv.weight"] == (576, 192)
    assert params["blocks.11.mlp.fc2.weight"] == (192, 768)
    assert params["blocks.3.norm1.weight"] == (192,)
    assert params["head.weight"] == (10, 192)
    assert params["pos_embed"] == (1, 197, 192)
    assert params["cls_token"] == (1, 1, 192)
    # exactly timm's names (and order): nothing renamed, nothing extra
    per_block = [f"{layer}.{kind}" for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for kind in ("weight", "bias")]
    timm = (["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
            + [f"blocks.{i}.{name}" for i in range(12) for name in per_block]
            + ["norm.weight", "norm.bias", "head.weight", "head.bias"])
    assert sorted(params) == sorted(timm)
    assert len(params) == 4 + 12 * 12 + 4


def test_token_schedule_and_gmacs():
    ppt = create_model("ppt_deit_small_patch16_224")
    tokens = [ppt.token_schedule[0][0]] + [n_out for n_in, n_out in ppt.token_schedule if n_out < n_in]
    assert tokens == [197, 147, 97, 49]
    assert model_gmacs(ppt) == pytest.approx(2.941, abs=1e-3)
    assert model_gmacs(create_model("deit_small_patch16_224")) == pytest.approx(4.599, abs=1e-3)
    dense = create_model("ppt_deit_small_patch16_224", r_tokens=0)
    assert all(n_in == n_out for n_in, n_out in dense.token_schedule)
    per_block = create_model("ppt_deit_tiny_patch16_224", r_tokens=[0, 0, 0, 10, 0, 0, 30, 0, 0, 200, 0, 0])
    assert [n for _, n in per_block.token_schedule][3::3] == [187, 157, 79]  # 200 is clamped to (157-1)//2


def test_bad_compression_arguments_are_named():
    with pytest.raises(ValueError, match="pp_loc_list entry 12"):
        create_model("ppt_deit_tiny_patch16_224", pp_loc_list=(3, 12))
    with pytest.raises(ValueError, match="one entry per block"):
        create_model("ppt_deit_tiny_patch16_224", r_tokens=[1, 2])


@pytest.fixture(scope="module")
def mixed_small():
    """DeiT-S with source tracing and a threshold splitting the batch at block 3 (decision_checks.probe:
    inspect_compression plus the scores and keys each block used)."""
    ms.set_seed(1)
    model = create_model("ppt_deit_small_patch16_224", trace_source=True, threshold=1e9, num_classes=100)
    sharpen_attention(model)
    images = random_images(8)
    _, infos = probe(model, images)
    variances = np.sort(infos[0]["variance"])
    model.set_threshold(float(variances[3] + variances[4]) / 2)
    logits, infos = probe(model, images)
    return model, images, logits, infos


def test_mixed_batch_has_both_policies(mixed_small):
    _, _, _, infos = mixed_small
    assert infos[0]["pooled"].sum() == 4  # same machine, same graph and inputs: the variances repeat exactly
    assert [info["size"].shape[1] for info in infos] == [147, 97, 49]


def test_mixed_batch_equals_each_image_alone(mixed_small):
    """Each image's decisions and logits do not depend on the rest of the batch. Alone, the matmuls have
    other shapes (other kernels and blockings), so float32 rounding differs: decisions are compared with
    the near-tie rule of tests/decision_checks.py, logits where the decisions agree at every block."""
    model, images, logits, infos = mixed_small
    threshold = model.blocks[model.compression_blocks[0]].compression.threshold
    alone_logits, alone_infos = stack_images([probe(model, images[i:i + 1]) for i in range(len(images))])
    log = []
    agree = compare_runs(Run.from_model("alone", alone_logits, alone_infos, threshold),
                         Run.from_model("batch", logits, infos, threshold),
                         score_rtol=FP32_SCORE_RTOL, sim_atol=FP32_SIM_ATOL, log=log)
    print("\n".join(log))
    np.testing.assert_allclose(alone_logits[agree], logits[agree], rtol=1e-4, atol=1e-5)


def test_sizes_and_source_bookkeeping(mixed_small):
    _, images, _, infos = mixed_small
    n0 = 197
    for i in range(len(images)):
        size, source = np.ones(n0), np.eye(n0)
        for info in infos:
            kept, new_size, new_source = info["kept"][i], info["size"][i], info["source"][i]
            assert set(np.unique(new_source)) <= {0.0, 1.0}
            assert new_source.sum(axis=0).max() <= 1  # every patch in at most one token
            np.testing.assert_array_equal(new_source.sum(axis=1), new_size)
            assert new_source[0, 0] == 1  # class token first, alone
            if info["pooled"][i]:
                assert new_size.sum() == size.sum()  # pooling conserves the total size
                np.testing.assert_array_equal(new_source.sum(axis=0), source.sum(axis=0))
                # each output token's group contains the token it is anchored at
                assert np.all(new_source >= source[kept])
            else:
                np.testing.assert_array_equal(new_size, size[kept])
                np.testing.assert_array_equal(new_source, source[kept])
                removed = np.setdiff1d(np.arange(len(size)), kept)
                assert size.sum() - new_size.sum() == size[removed].sum()
                # pruned tokens' patches belong to no token any more
                assert new_source[:, source[removed].sum(axis=0) > 0].sum() == 0
            size, source = new_size, new_source


def _tokens_after_each_block(model, images):
    """The tokens (B, N, C) each block outputs, captured with forward hooks (PyNative mode)."""
    captured = []
    handles = [blk.register_forward_hook(lambda cell, args, output: captured.append(output[0].asnumpy()))
               for blk in model.blocks]
    try:
        model.set_train(False)
        logits = model(ms.Tensor(images)).asnumpy()
    finally:
        for handle in handles:
            handle.remove()
    assert len(captured) == len(model.blocks)
    return logits, captured


def test_dense_has_no_compression_and_same_features_before_first_block(pynative):
    """The dense DeiT has no compression cell anywhere; the PPT model with the same weights computes the
    same tokens as the dense one up to its first compression block (3), and fewer tokens from there on."""
    from mindppt.models.weights import copy_weights

    dense = create_model("deit_tiny_patch16_224", num_classes=10)
    assert all(blk.compression is None for blk in dense.blocks)
    assert dense.compression_blocks == [] and all(n_in == n_out for n_in, n_out in dense.token_schedule)
    assert not [name for name, _ in dense.parameters_and_names() if "compression" in name or "ppt" in name]

    ppt = create_model("ppt_deit_tiny_patch16_224", num_classes=10)
    copy_weights(dense, ppt)
    assert ppt.compression_blocks == [3, 6, 9]
    images = random_images(2, seed=3)
    dense_logits, dense_tokens = _tokens_after_each_block(dense, images)
    ppt_logits, ppt_tokens = _tokens_after_each_block(ppt, images)
    assert [t.shape[1] for t in dense_tokens] == [197] * 12
    assert [t.shape[1] for t in ppt_tokens] == [197, 197, 197, 147, 147, 147, 97, 97, 97, 49, 49, 49]
    for block in range(3):
        np.testing.assert_array_equal(ppt_tokens[block], dense_tokens[block], err_msg=f"block {block}")
    assert dense_logits.shape == ppt_logits.shape == (2, 10)
    assert not np.allclose(dense_logits, ppt_logits)  # the compression did change the result

    logits, infos = inspect_compression(dense, images)  # and nothing to inspect
    assert infos == []
    np.testing.assert_allclose(logits, dense_logits, rtol=1e-5, atol=1e-6)


def test_training_step_in_graph_mode_updates_every_block():
    ms.set_seed(0)
    model = create_model("ppt_deit_tiny_patch16_224", num_classes=10, drop_path_rate=0.1, threshold=1e9)
    images = random_images(4, seed=5)
    _, infos = inspect_compression(model, images)
    variances = np.sort(infos[0]["variance"])
    model.set_threshold(float(variances[1] + variances[2]) / 2)  # two images pool, two prune
    _, infos = inspect_compression(model, images)
    assert infos[0]["pooled"].sum() == 2
    before = {name: p.asnumpy().copy() for name, p in model.parameters_and_names()}
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = nn.AdamWeightDecay(model.trainable_params(), learning_rate=1e-3)
    step = nn.TrainOneStepCell(nn.WithLossCell(model, loss_fn), optimizer)
    step.set_train(True)
    loss = step(ms.Tensor(images), ms.Tensor(np.array([1, 2, 3, 4], np.int32)))
    assert np.isfinite(loss.asnumpy())
    unchanged = [name for name, p in model.parameters_and_names()
                 if p.requires_grad and np.array_equal(before[name], p.asnumpy())]
    assert len([n for n in before if n.startswith("blocks.")]) > 12 * 12
    assert unchanged == [], f"parameters not updated: {unchanged}"


def test_threshold_change_reaches_a_compiled_graph():
    model = create_model("ppt_deit_tiny_patch16_224", threshold=0.0, num_classes=10)
    sharpen_attention(model)
    images = random_images(2, seed=7)
    _, infos = inspect_compression(model, images)
    assert not infos[0]["pooled"].any()
    model.set_threshold(1e9)  # same model, graph already compiled
    _, infos = inspect_compression(model, images)
    assert infos[0]["pooled"].all()
    assert model.blocks[3].compression.threshold == pytest.approx(1e9)
    assert all(not p.requires_grad for n, p in model.parameters_and_names() if n.endswith("ppt_threshold"))


def test_a_repeated_call_leaves_the_sub_cells_alone_until_the_graph_changes():
    """MindSpore assigns a graph's phase to every sub-cell on every call; the models skip that walk while
    the phase is the one they hold (PhaseOnceCell), and a new graph (another input shape, a network around
    the model) still reaches every sub-cell."""
    model = create_model("ppt_deit_tiny_patch16_224", num_classes=3, img_size=32, depth=2, r_tokens=1,
                         pp_loc_list=(0,))
    model.set_train(False)
    images = random_images(2, size=32)
    model(ms.Tensor(images))
    phase = model.compile_phase
    cells = [cell for _, cell in model.cells_and_names()][1:]
    assert phase and all(cell.compile_phase == phase for cell in cells)
    block = model.blocks[1]
    nn.Cell.compile_phase.fset(block, "stale")  # MindSpore's own setter: the block and the cells below it
    model(ms.Tensor(images))
    assert model.compile_phase == phase and block.compile_phase == "stale"
    model(ms.Tensor(images[:1]))
    assert model.compile_phase != phase
    assert all(cell.compile_phase == model.compile_phase for cell in cells)
    inspect_compression(model, images[:1])  # a network around the model: its graph's phase reaches them all
    inspector_phase = model.compile_phase
    model(ms.Tensor(images[:1]))
    inspect_compression(model, images[:1])  # again, after the model's own graph ran in between
    assert model.compile_phase == inspector_phase
    assert all(cell.compile_phase == inspector_phase for cell in cells)


def test_gelu_matches_exact_erf_gelu_and_its_gradient():
    from mindppt.models.vit import GELU

    # beyond the polynomial's fitted range (|x| <= 5.66) too: the formula has no clipping
    x = np.concatenate([np.linspace(-40, 40, 16001), [-1e30, -1e4, -300.0, 300.0, 1e4, 1e30]])
    gelu = GELU()
    xt = ms.Tensor(x.astype(np.float32))
    # bounds relative to float32's precision (model_helpers): the fused kernel's, or MindSpore's ops'
    phi_ulps = FUSED_PHI_ULPS if gelu.fused_forward is not None else MINDSPORE_PHI_ULPS
    assert_gelu_close(gelu(xt).asnumpy(), x, phi_ulps)
    grad = ms.grad(gelu)(xt).asnumpy()
    assert np.abs(grad - exact_gelu_grad(x)).max() <= GELU_GRAD_ATOL
    # fp16 (the MLP's dtype under AMP O2): as close as fp16 itself allows, and no inf/nan from overflow
    fits = np.abs(x) < 6e4
    half = gelu(ms.Tensor(x[fits].astype(np.float16))).asnumpy().astype(np.float64)
    assert np.isfinite(half).all()
    exact = exact_gelu(x[fits].astype(np.float16))
    assert np.all(np.abs(half - exact) <= FP16_GELU_TOL * (np.abs(exact) + 1))


def test_r_clamp_warning_counts_the_distillation_token():
    """r may be at most half of the patch tokens: (N - 2) // 2 with a distillation token. Asking a block for
    all of its patch tokens warns; asking for one fewer is the halving rule, reported without a warning."""
    # digits ViT (16 patches), distilled: 18 tokens -> at most 8 removed at block 1
    fits = create_model("vit_digits_patch4_16", distilled=True, r_tokens=15, pp_loc_list=(1,))
    assert fits.token_schedule[1] == (18, 10) and r_clamps(fits) == [(1, 15, 8, 18)]
    assert warn_clamped_r_tokens(fits, 15) is None
    too_many = create_model("vit_digits_patch4_16", distilled=True, r_tokens=16, pp_loc_list=(1,))
    with pytest.warns(UserWarning, match=r"\(N - 2\) // 2"):
        assert warn_clamped_r_tokens(too_many, 16)
