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


def check(case, mode, ref_logits, ref_infos, logits, infos):
    scale = np.abs(ref_logits).max()
    err = float(np.abs(logits - ref_logits).max() / scale)
    WORST[(case, mode)] = err
    print(f"parity {case} {mode}: max |logit error| / max |logit| = {err:.2e}")
    assert err < 1e-4
    assert len(infos) == len(ref_infos)
    for ours, ref in zip(infos, ref_infos):
        assert ours["block"] == ref["block"]
        np.testing.assert_array_equal(ours["pooled"], ref["pool"])
        np.testing.assert_array_equal(ours["kept"], ref["kept"])
        np.testing.assert_array_equal(ours["size"], ref["size"])
        np.testing.assert_array_equal(ours["source"], ref["source"])
        np.testing.assert_allclose(ours["variance"], ref["variance"], rtol=1e-3)
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
