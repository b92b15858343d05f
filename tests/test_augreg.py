"""ViT (AugReg) in timm's naming, ``vit_{tiny,small,base}_patch16_224`` and their ``ppt_`` variants: timm's
hub files (``.safetensors`` written from torch tensors) and the JAX ``.npz`` layouts (big_vision's, and the
vision_transformer repository's in which the AugReg checkpoints were published) load exactly, and
ppt_vit_tiny_patch16_224 on weights read from a big_vision ``.npz`` matches the independent NumPy reference
(tests/ppt_reference.py): dense, all-prune, all-pool and a mixed batch, as tests/test_parity.py does for
DeiT-S (same architecture, AugReg only changes the weights)."""
import numpy as np
import pytest
from checkpoint_helpers import assert_params_equal, model_shapes, random_state, timm_to_jax, to_torch
from decision_checks import Run, assert_policy_case, assert_reference_parity, probe
from model_helpers import random_images
from ppt_reference import deit_config, random_deit_params, reference_forward

from mindppt.models import create_model

VIT_TINY = "vit_tiny_patch16_224"


def write_timm_safetensors(state, path):
    """As timm's hub files are written: ``safetensors.torch.save_file`` of the model's torch tensors."""
    from safetensors.torch import save_file

    save_file(to_torch(state), str(path))


def write_big_vision_npz(state, path):
    np.savez(path, **timm_to_jax(state, big_vision=True))


def write_vit_repo_npz(state, path):
    """The google-research/vision_transformer layout of the published AugReg .npz files."""
    np.savez(path, **timm_to_jax(state, big_vision=False))


@pytest.fixture(scope="module")
def vit_tiny_state():
    return random_state(model_shapes(VIT_TINY), seed=5)


@pytest.mark.parametrize("name,writer", [("model.safetensors", write_timm_safetensors),
                                         ("big_vision.npz", write_big_vision_npz),
                                         ("Ti_16-i21k-300ep--imagenet2012-res_224.npz", write_vit_repo_npz)])
def test_augreg_files_load_exactly(tmp_path, vit_tiny_state, name, writer):
    path = tmp_path / name
    writer(vit_tiny_state, path)
    assert_params_equal(create_model(VIT_TINY, checkpoint_path=str(path)), vit_tiny_state)


# ---------------------------------------------------------------------------------------------------
# Parity of ppt_vit_tiny_patch16_224 with the NumPy reference
# ---------------------------------------------------------------------------------------------------

NUM_CLASSES = 10
NUM_HEADS = 3
PPT = dict(r_tokens=50, pp_loc_list=(3, 6, 9))
CASES = {"dense": None, "all_prune": 0.0, "all_pool": 1e9, "mixed": "split"}
_REFERENCE = {}


@pytest.fixture(scope="module")
def parity_setup(tmp_path_factory):
    """Reference parameters written as a big_vision .npz, four images, the dense reference (with block 3's
    score variances: r = 0 there) and a threshold between the 2nd and 3rd image's variance."""
    params = random_deit_params(np.random.default_rng(1), num_classes=NUM_CLASSES, **deit_config("tiny"))
    path = tmp_path_factory.mktemp("augreg") / "vit_tiny_big_vision.npz"
    write_big_vision_npz(params, path)
    images = random_images(4, seed=21)
    dense = reference_forward(params, images, num_heads=NUM_HEADS, r_tokens=0, pp_loc_list=(3,))
    variance = np.sort(dense[1][0]["variance"])
    return dict(params=params, path=str(path), images=images, dense_logits=dense[0],
                split=float(np.sqrt(variance[1] * variance[2])))


@pytest.fixture(scope="module")
def ppt_vit_tiny(parity_setup):
    """One PPT model for the three policies (the threshold is a run-time setting: one compiled graph)."""
    return create_model("ppt_vit_tiny_patch16_224", num_classes=NUM_CLASSES, trace_source=True,
                        checkpoint_path=parity_setup["path"], **PPT)


@pytest.mark.parametrize("case", list(CASES))
def test_ppt_vit_tiny_parity(case, parity_setup, ppt_vit_tiny):
    setup = parity_setup
    threshold = CASES[case]
    if threshold is None:
        model = create_model("ppt_vit_tiny_patch16_224", num_classes=NUM_CLASSES, trace_source=True, r_tokens=0,
                             checkpoint_path=setup["path"])
        ref_logits, ref_infos = setup["dense_logits"], []
    else:
        threshold = setup["split"] if threshold == "split" else threshold
        model = ppt_vit_tiny
        model.set_threshold(threshold)
        if case not in _REFERENCE:
            _REFERENCE[case] = reference_forward(setup["params"], setup["images"], num_heads=NUM_HEADS,
                                                 threshold=threshold, **PPT)
        ref_logits, ref_infos = _REFERENCE[case]
    logits, infos = probe(model, setup["images"])
    ours = Run.from_model("mindppt", logits, infos, threshold)
    ref = Run.from_reference("reference", ref_logits, ref_infos, threshold)
    agree, _ = assert_reference_parity(f"ppt_vit_tiny {case}", ours, ref)
    assert_policy_case(case, ours, ref)
    if case == "dense":
        assert agree.all()
    if case == "mixed":
        assert ref.blocks[0]["pooled"].sum() == 2
