"""Distilled DeiT (``deit_*_distilled_patch16_224`` and ``ppt_`` variants) in GRAPH_MODE: the class and
distillation tokens are protected from pruning and pooling and stay at positions 0 and 1; the logits are
the mean of the two heads.

* parity with the independent NumPy reference (tests/ppt_reference.py) on DeiT-Ti-distilled shapes,
  dense, all-prune, all-pool and a mixed batch (decisions compared with tests/decision_checks.py, as
  tests/test_parity.py does for DeiT-S; the two-token rule does not depend on the width);
* a crafted input whose distillation token has the lowest significance score of all tokens: the
  official PPT rule (scores over every token but the class token) prunes it and then reads a patch at
  position 1; ours keeps it at position 1, alone and unmerged, in every compression block;
* the eval logits are the mean of ``head`` on token 0 and ``head_dist`` on token 1.
"""
import mindspore as ms
import numpy as np
import ppt_reference as reference
import pytest
from decision_checks import (
    FP32_LOGIT_RTOL,
    U32,
    Run,
    assert_policy_case,
    assert_reference_parity,
    probe,
)
from mindspore import nn
from model_helpers import random_images

from mindppt.models import create_model
from mindppt.models.ppt import is_runtime_setting

NUM_CLASSES = 10
TINY = reference.deit_config("tiny")
PPT = dict(r_tokens=50, pp_loc_list=(3, 6, 9))  # the ppt_ variant's blocks: 198 -> 148 -> 98 -> 50 tokens
THRESHOLDS = {"all_prune": 0.0, "all_pool": 1e9, "mixed": "split"}


def load_params(model, params):
    for name, param in model.parameters_and_names():
        if not is_runtime_setting(name):
            param.set_data(ms.Tensor(params[name]))
    return model


class HeadsProbe(nn.Cell):
    """One graph: the features, both heads' logits (forward_heads) and the model's own output."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, x):
        features, _ = self.model.forward_features(x)
        cls_logits, dist_logits = self.model.forward_heads(features)
        return features, cls_logits, dist_logits, self.model(x)


@pytest.fixture(scope="module")
def tiny():
    """Random DeiT-Ti-distilled weights, 4 images, the reference's all-prune run and a threshold between
    the 2nd and 3rd block-3 variance (geometric mean: float rounding cannot move an image across it)."""
    params = reference.random_deit_params(0, num_classes=NUM_CLASSES, distilled=True, **TINY)
    images = random_images(4, seed=11)
    pruned = reference.reference_forward(params, images, num_heads=3, threshold=0.0, **PPT)
    v = np.sort(pruned[1][0]["variance"])
    return dict(params=params, images=images, split=float(np.sqrt(v[1] * v[2])), references={"all_prune": pruned})


@pytest.fixture(scope="module")
def ppt_tiny(tiny):
    """ppt_deit_tiny_distilled_patch16_224 with the random weights (one graph: the threshold is a Parameter)."""
    model = create_model("ppt_deit_tiny_distilled_patch16_224", num_classes=NUM_CLASSES, trace_source=True)
    assert model.compression_blocks == [3, 6, 9] and model.token_schedule[9] == (98, 50)
    return load_params(model, tiny["params"])


def compare(name, ours, ref):
    """decision_checks' reference comparison for two protected tokens; at least one image must agree."""
    assert ours.num_protected == ref.num_protected == 2
    agree, _ = assert_reference_parity(f"distilled {name}", ours, ref)
    assert agree.any(), "no image's decisions agree with the reference"
    return agree


@pytest.mark.parametrize("case", list(THRESHOLDS))
def test_ppt_parity_with_reference(case, tiny, ppt_tiny):
    assert ms.get_context("mode") == ms.GRAPH_MODE
    threshold = tiny["split"] if THRESHOLDS[case] == "split" else THRESHOLDS[case]
    if case not in tiny["references"]:
        tiny["references"][case] = reference.reference_forward(tiny["params"], tiny["images"], num_heads=3,
                                                               threshold=threshold, **PPT)
    ref = Run.from_reference("reference", *tiny["references"][case], threshold)
    ppt_tiny.set_threshold(threshold)
    ours = Run.from_model("mindppt", *probe(ppt_tiny, tiny["images"]), threshold)
    compare(case, ours, ref)
    assert_policy_case(case, ours, ref)
    for block in ours.blocks:  # both protected tokens at 0 and 1, alone, in every block
        assert np.all(block["kept"][:, :2] == [0, 1])
        assert np.all(block["source"][:, :2] == np.eye(2, 198))


def test_dense_parity_and_heads_averaged(tiny):
    """Dense DeiT-Ti-distilled against the reference; ``forward_heads`` reads token 0 with ``head`` and
    token 1 with ``head_dist``, and the model's output is their mean."""
    model = load_params(create_model("deit_tiny_distilled_patch16_224", num_classes=NUM_CLASSES), tiny["params"])
    model.set_train(False)
    features, cls_logits, dist_logits, logits = (t.asnumpy().astype(np.float64)
                                                 for t in HeadsProbe(model)(ms.Tensor(tiny["images"])))
    ref_logits, _ = reference.reference_forward(tiny["params"], tiny["images"], num_heads=3)
    err = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
    print(f"distilled dense: max |logit error| / max |logit| = {err:.2e}")
    assert err < FP32_LOGIT_RTOL

    params = tiny["params"]
    for out, token, head in ((cls_logits, 0, "head"), (dist_logits, 1, "head_dist")):
        weight, bias = params[f"{head}.weight"].astype(np.float64), params[f"{head}.bias"].astype(np.float64)
        f = features[:, token]
        # float32 dot products of length C in any order, FMA or not: within (C + 2) u of sum |terms|
        bound = (TINY["embed_dim"] + 2) * U32 * (np.abs(f) @ np.abs(weight).T + np.abs(bias))
        assert np.all(np.abs(out - (f @ weight.T + bias)) <= bound), head
    mean = (cls_logits + dist_logits) / 2
    bound = 4 * U32 * (np.abs(cls_logits) + np.abs(dist_logits))
    assert np.all(np.abs(logits - mean) <= bound)
    # the heads disagree far beyond that bound: the output is neither head alone
    assert np.all(np.abs(cls_logits - dist_logits).max(axis=1) > 1e3 * bound.max(axis=1))


# --------------------------------------------------------------------------------------------
# A distillation token with the lowest score
# --------------------------------------------------------------------------------------------

CRAFTED = dict(embed_dim=192, depth=3, num_heads=3)
CRAFTED_PPT = dict(r_tokens=50, pp_loc_list=(0, 1, 2))  # 198 -> 148 -> 98 -> 50


def crafted_params():
    """Random weights where the distillation token's value vector in block 0 is exactly zero, so its
    significance score there is 0, below every patch's: its input row (dist_token + pos_embed[1]) is zero,
    hence constant over channels, so norm1 maps it to norm1.bias = 0, and qkv maps that to the qkv bias,
    whose value part is 0."""
    params = reference.random_deit_params(3, num_classes=NUM_CLASSES, distilled=True, **CRAFTED)
    c = CRAFTED["embed_dim"]
    params["dist_token"][:] = 0.0
    params["pos_embed"][0, 1] = 0.0
    params["blocks.0.norm1.bias"][:] = 0.0
    params["blocks.0.attn.qkv.bias"][2 * c:] = 0.0
    return params


def official_block0_prune(params, image, r):
    """What the official PPT code keeps in block 0 (from the reference's attention and values): scores
    over every token but the class token (the distillation token ranked as a patch), the class token
    given 2, the N - r best kept in descending order. Returns (scores, kept)."""
    x = reference.patch_embed(params, image.astype(np.float64), 16)
    prefix = [params["cls_token"].reshape(1, -1), params["dist_token"].reshape(1, -1)]
    x = np.concatenate(prefix + [x], axis=0) + params["pos_embed"][0]
    h = reference.layer_norm(x, params["blocks.0.norm1.weight"], params["blocks.0.norm1.bias"])
    _, attn, k, v = reference.attention(params, "blocks.0.", h, np.ones(len(x)), CRAFTED["num_heads"], True)
    scores, _ = reference.significance_scores(attn, v, num_protected=1)
    n = len(x)
    _, _, _, kept = reference.prune(x, np.ones(n), np.eye(n), scores, min(r, (n - 1) // 2))
    return scores, kept


@pytest.fixture(scope="module")
def crafted():
    params = crafted_params()
    images = random_images(2, seed=5)
    model = create_model("ppt_deit_tiny_distilled_patch16_224", num_classes=NUM_CLASSES, trace_source=True,
                         depth=CRAFTED["depth"], **CRAFTED_PPT)
    return params, images, load_params(model, params)


def test_official_rule_prunes_the_crafted_distillation_token(crafted):
    params, images, _ = crafted
    for image in images:
        scores, kept = official_block0_prune(params, image, CRAFTED_PPT["r_tokens"])
        assert scores[1] == 0.0 and np.all(scores[2:] > 0)  # the lowest score of all
        assert 1 not in kept  # pruned: position 1 now holds a patch
        assert kept[1] == 1 + np.argmax(scores[1:])


@pytest.mark.parametrize("threshold", [0.0, 1e9], ids=["all_prune", "all_pool"])
def test_crafted_distillation_token_is_never_pruned_or_merged(crafted, threshold):
    params, images, model = crafted
    model.set_threshold(threshold)
    ours = Run.from_model("mindppt", *probe(model, images), threshold)
    ref = Run.from_reference("reference", *reference.reference_forward(
        params, images, num_heads=CRAFTED["num_heads"], threshold=threshold, **CRAFTED_PPT), threshold)
    compare(f"crafted threshold {threshold:g}", ours, ref)
    assert [block["block"] for block in ours.blocks] == [0, 1, 2]
    n0 = 198
    for block in ours.blocks:
        assert np.all(block["pooled"] == (threshold > 0))
        # position 1 is the input's position 1 (the distillation token, by induction from block 0), has size
        # 1 (nothing merged into it) and covers original token 1 alone
        assert np.all(block["kept"][:, :2] == [0, 1])
        assert np.all(block["size"][:, :2] == 1.0)
        np.testing.assert_array_equal(block["source"][:, 1], np.broadcast_to(np.eye(n0)[1], (len(images), n0)))
        np.testing.assert_array_equal(block["source"][:, 0], np.broadcast_to(np.eye(n0)[0], (len(images), n0)))
        assert np.all(block["scores"][:, :2] == [3.0, 2.0])
