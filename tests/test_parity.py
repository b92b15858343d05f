"""mindppt against the independent NumPy reference of the spec (tests/ppt_reference.py), DeiT-S shapes,
random weights, in GRAPH_MODE and PYNATIVE_MODE: dense, all-prune, all-pool and a mixed batch.

The reference computes in float64, the model in float32 with the CPU's kernels (AVX2 or AVX-512 code
paths, any thread count), so the significance scores and pooling similarities differ by float32
rounding carried through up to nine blocks. Decisions are compared with tests/decision_checks.py: per
run exactly (each run's decisions are the spec's rules on its own numbers), across runs exactly except
where two candidates are tied within twice the measured score or similarity difference, at any block;
the measured differences must be within FP32_SCORE_RTOL / FP32_SIM_ATOL. Logits are compared for the
images whose decisions agree at every block (all of them in the dense case).

On the CPU backend the model runs fused kernels (LayerNorm, softmax, head split/merge, the compression's
significance, plan and merge: mindppt.models.fused_cpu); Ascend and GPU run the portable MindSpore ops.
Both are held to the same reference here.
"""
import mindspore as ms
import numpy as np
import pytest
from decision_checks import Run, assert_policy_case, assert_reference_parity, probe
from model_helpers import random_images
from ppt_reference import deit_config, random_deit_params, reference_forward

from mindppt.models import create_model, fused_cpu
from mindppt.models.ppt import is_runtime_setting

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


def run_case(case, setup, portable=False):
    params, images, split = setup
    threshold = CASES[case]
    if threshold is None:
        kwargs = dict(r_tokens=0)
    else:
        threshold = split if threshold == "split" else threshold
        kwargs = dict(r_tokens=50, pp_loc_list=(3, 6, 9), threshold=threshold)
    if case not in _REFERENCE:
        _REFERENCE[case] = reference_forward(params, images, num_heads=6, **kwargs)
    ref_logits, ref_infos = _REFERENCE[case]
    if portable:
        with fused_cpu.disabled():
            model = create_model("ppt_deit_small_patch16_224", num_classes=NUM_CLASSES, trace_source=True, **kwargs)
        assert model.blocks[0].norm1.fused is None and model.blocks[0].attn.split_qkv is None
    else:
        model = create_model("ppt_deit_small_patch16_224", num_classes=NUM_CLASSES, trace_source=True, **kwargs)
        assert model.blocks[0].norm1.fused is not None, "the fused CPU kernels did not build here"
    model = load_params(model, params)
    logits, infos = probe(model, images)
    return (Run.from_model("mindppt", logits, infos, threshold),
            Run.from_reference("reference", ref_logits, ref_infos, threshold))


def check(case, mode, ours, ref):
    agree, err = assert_reference_parity(f"parity {case} {mode}", ours, ref)
    WORST[(case, mode)] = float(err.max())
    assert_policy_case(case, ours, ref)
    if case == "dense":
        assert agree.all()


@pytest.mark.parametrize("case", list(CASES))
def test_parity_graph_mode(case, setup):
    assert ms.get_context("mode") == ms.GRAPH_MODE
    check(case, "graph", *run_case(case, setup))


@pytest.mark.parametrize("case", list(CASES))
def test_parity_pynative_mode(case, setup, pynative):
    assert ms.get_context("mode") == ms.PYNATIVE_MODE
    check(case, "pynative", *run_case(case, setup))


@pytest.mark.parametrize("case", list(CASES))
def test_parity_graph_mode_portable_ops(case, setup):
    """The graph Ascend and GPU run (no fused CPU kernel), against the same reference."""
    check(case, "graph portable", *run_case(case, setup, portable=True))
