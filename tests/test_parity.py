"""mindppt against the independent NumPy reference of the spec (tests/ppt_reference.py), DeiT-S shapes,
random weights, in GRAPH_MODE and PYNATIVE_MODE: dense, all-prune, all-pool and a mixed batch."""
import numpy as np
import pytest

import mindspore as ms

from mindppt.models import create_model, inspect_compression
from mindppt.models.ppt import is_runtime_setting
from ppt_reference import deit_config, random_deit_params, reference_forward
from model_helpers import random_images

NUM_CLASSES = 100
CASES = {"dense": None, "all_prune": 0.0, "all_pool": 1e9, "mixed": "split"}
WORST = {}
_REFERENCE = {}


def load_params(model, params):
    for name, param in model.parameters_and_names():
        if not is_runtime_setting(name):
            param.set_data(ms.Tensor(params[name]))
    return model


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    params = random_deit_params(rng, num_classes=NUM_CLASSES, **deit_config("small"))
    images = random_images(8, seed=11)
    # Threshold for the mixed case: between the 4th and 5th block-3 variance (geometric mean, so
    # fp32-vs-fp64 rounding cannot move an image across it).
    _, infos = reference_forward(params, images, num_heads=6, r_tokens=50, pp_loc_list=(3, 6, 9), threshold=0.0)
    v = np.sort(infos[0]["variance"])
    return params, images, float(np.sqrt(v[3] * v[4]))


def run_case(case, setup):
    params, images, split = setup
    threshold = CASES[case]
    if threshold is None:
        kwargs = dict(r_tokens=0)
    else:
        kwargs = dict(r_tokens=50, pp_loc_list=(3, 6, 9), threshold=split if threshold == "split" else threshold)
    if case not in _REFERENCE:
        _REFERENCE[case] = reference_forward(params, images, num_heads=6, **kwargs)
    ref_logits, ref_infos = _REFERENCE[case]
    model = load_params(create_model("ppt_deit_small_patch16_224", num_classes=NUM_CLASSES,
                                     trace_source=True, **kwargs), params)
    logits, infos = inspect_compression(model, images)
    return ref_logits, ref_infos, logits, infos


# Two pruned tokens whose float64 scores differ by less than this (relative) may come out in either
# order: float32 through nine blocks carries about that much error (see the logit bound above).
SCORE_TIE_RTOL = 1e-4


def assert_same_tokens_up_to_score_ties(ours, ref):
    """Last compression block: the same tokens with the same sizes and sources, in the same order except
    that a pruned image may swap tokens whose reference scores tie within SCORE_TIE_RTOL. (Earlier
    blocks must match exactly: their order decides the next block's bipartite split.)"""
    for b in range(len(ref["kept"])):
        kept, ref_kept = ours["kept"][b], ref["kept"][b]
        differ = np.flatnonzero(kept != ref_kept)
        if differ.size:
            assert not ref["pool"][b], f"image {b}: pooled tokens differ at {differ}"
            assert sorted(kept) == sorted(ref_kept), f"image {b}: a different set of tokens was kept"
            scores = ref["scores"][b]
            for j in differ:
                gap = abs(scores[kept[j]] - scores[ref_kept[j]]) / scores[ref_kept[j]]
                assert gap < SCORE_TIE_RTOL, f"image {b} position {j}: tokens {kept[j]}/{ref_kept[j]} gap {gap:.1e}"
            TIE_SWAPS.append((b, [(int(kept[j]), int(ref_kept[j])) for j in differ]))
            print(f"image {b}: tied tokens in the other order (ours/reference) {TIE_SWAPS[-1][1]}")
        order, ref_order = np.argsort(kept), np.argsort(ref_kept)  # compare row by row, by token
        np.testing.assert_array_equal(ours["size"][b][order], ref["size"][b][ref_order])
        np.testing.assert_array_equal(ours["source"][b][order], ref["source"][b][ref_order])


TIE_SWAPS = []


def check(case, mode, ref_logits, ref_infos, logits, infos):
    scale = np.abs(ref_logits).max()
    err = float(np.abs(logits - ref_logits).max() / scale)
    WORST[(case, mode)] = err
    print(f"parity {case} {mode}: max |logit error| / max |logit| = {err:.2e}")
    assert err < 1e-4
    assert len(infos) == len(ref_infos)
    for i, (ours, ref) in enumerate(zip(infos, ref_infos)):
        assert ours["block"] == ref["block"]
        np.testing.assert_array_equal(ours["pooled"], ref["pool"])
        np.testing.assert_allclose(ours["variance"], ref["variance"], rtol=1e-3)
        if i == len(infos) - 1:
            assert_same_tokens_up_to_score_ties(ours, ref)
            continue
        np.testing.assert_array_equal(ours["kept"], ref["kept"])
        np.testing.assert_array_equal(ours["size"], ref["size"])
        np.testing.assert_array_equal(ours["source"], ref["source"])
    if case == "all_prune":
        assert not any(info["pooled"].any() for info in infos)
    if case == "all_pool":
        assert all(info["pooled"].all() for info in infos)
    if case == "mixed":
        assert 0 < infos[0]["pooled"].sum() < len(logits)


@pytest.mark.parametrize("case", list(CASES))
def test_parity_graph_mode(case, setup):
    assert ms.get_context("mode") == ms.GRAPH_MODE
    check(case, "graph", *run_case(case, setup))


@pytest.mark.parametrize("case", list(CASES))
def test_parity_pynative_mode(case, setup, pynative):
    assert ms.get_context("mode") == ms.PYNATIVE_MODE
    check(case, "pynative", *run_case(case, setup))


def test_tie_rule_accepts_only_swaps_of_tied_pruned_tokens():
    scores = np.array([[2.0, 0.30, 0.300001, 0.2, 0.1999]])
    ref = dict(kept=np.array([[0, 1, 2, 3]]), pool=np.array([False]), scores=scores,
               size=np.ones((1, 4)), source=np.eye(5)[[0, 1, 2, 3]][None])

    def ours(kept):
        return dict(kept=np.array([kept]), size=np.ones((1, 4)), source=np.eye(5)[kept][None])

    assert_same_tokens_up_to_score_ties(ours([0, 2, 1, 3]), ref)  # 0.30 vs 0.300001: a tie
    with pytest.raises(AssertionError, match="gap"):
        assert_same_tokens_up_to_score_ties(ours([0, 1, 3, 2]), ref)  # 0.300001 vs 0.2: not a tie
    with pytest.raises(AssertionError, match="different set"):
        assert_same_tokens_up_to_score_ties(ours([0, 1, 2, 4]), ref)
    with pytest.raises(AssertionError, match="pooled"):
        assert_same_tokens_up_to_score_ties(ours([0, 2, 1, 3]), dict(ref, pool=np.array([True])))
