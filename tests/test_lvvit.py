"""LV-ViT-S (mindppt/models/lvvit.py) against the official layout and the NumPy reference, in GRAPH_MODE.

* A torch-written file in the official checkpoint's layout (TokenLabeling's bare state dict with BatchNorm
  running statistics and ``num_batches_tracked``) loads strictly into ``lvvit_s``, and
  tools/convert_weights.py turns it into a ``.ckpt`` that loads into ``ppt_lvvit_s``: every parameter is
  the file's, exactly.
* GMACs against a count by hand and the paper's 6.6 G.
* Parity with tests/lvvit_reference.py (float64, written from the official architecture): all-prune,
  all-pool and a mixed batch on a narrow LV-ViT (width 96; the real stem, 16 blocks, 224 px, blocks 4, 8,
  12); the real ``lvvit_s`` loaded from the official file (dense) and the real ``ppt_lvvit_s`` with the
  converted weights (a batch with one pooled and one pruned image). Decisions are compared with
  tests/decision_checks.py as in tests/test_parity.py.
* The inference logits are ``head(x_cls) + 0.5 * max over the other tokens of aux_head(x)``, checked on
  the model's own features after compression.
"""
import mindspore as ms
import numpy as np
import pytest
from checkpoint_helpers import torch_save
from decision_checks import U32, Run, assert_policy_case, assert_reference_parity, probe
from lvvit_reference import LVVIT_S, embed_images, random_lvvit_params, reference_forward
from mindspore import nn
from model_helpers import random_images
from tool_helpers import CONVERT, ToolResult, start_tool

from mindppt.models import create_model
from mindppt.models.flops import model_gmacs
from mindppt.models.weights import load_state_dict_into_model

PPT = dict(r_tokens=50, pp_loc_list=(4, 8, 12))
NARROW = dict(embed_dim=96, depth=16, num_heads=6, num_classes=100)
CASES = {"all_prune": 0.0, "all_pool": 1e9, "mixed": "split"}
# Logits of images whose decisions agree, relative to the largest logit: measured <= 7e-7 here (both
# widths, every case); the bound is decision_checks.FP32_LOGIT_RTOL.
BATCH_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def model_name_of(official):
    """mindppt's parameter name for an official one (MindSpore's BatchNorm names)."""
    prefix, _, leaf = official.rpartition(".")
    return f"{prefix}.{BATCH_NORM[leaf]}" if ".bn" in official else official


def assert_params_are(model, state):
    params = {p.name: p.asnumpy() for _, p in model.parameters_and_names() if "ppt_threshold" not in p.name}
    assert sorted(params) == sorted(model_name_of(name) for name in state)
    for name, value in state.items():
        np.testing.assert_array_equal(params[model_name_of(name)], value, err_msg=name)


def threshold_between(variances, n_pooled):
    """A threshold that pools the ``n_pooled`` lowest variances (geometric mean of the neighbours, so
    float32-vs-float64 rounding cannot move an image across it)."""
    v = np.sort(variances)
    return float(np.sqrt(v[n_pooled - 1] * v[n_pooled]))


def check(name, ours, ref):
    """The reference comparison of decision_checks; at least one image must agree. Returns ``agree``."""
    agree, _ = assert_reference_parity(f"lvvit parity {name}", ours, ref)
    assert agree.any()
    return agree


# --------------------------------------------------------------------------------------------
# The official checkpoint layout, its conversion, the real width
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """LV-ViT-S weights in the official layout, written by torch as TokenLabeling releases them (a bare
    state dict; mindppt.formats also unwraps timm's ``{"state_dict": ...}``, see test_formats), and that
    file converted by the CLI, which runs in the background while the tests go on."""
    import torch

    d = tmp_path_factory.mktemp("lvvit")
    params = random_lvvit_params(1, num_classes=1000, **LVVIT_S)
    state = {name: torch.from_numpy(value) for name, value in params.items()}
    for i in (1, 2, 3):
        state[f"patch_embed.bn{i}.num_batches_tracked"] = torch.tensor(375300, dtype=torch.int64)
    bare, converted = d / "lvvit_s-26M-224-83.3.pth.tar", d / "lvvit_s.ckpt"
    torch_save(state, bare)
    proc = start_tool(CONVERT, "--src", bare, "--dst", converted, "--model", "lvvit_s")
    yield dict(params=params, bare=bare, converted=converted, proc=proc)
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def loaded(official):
    """``lvvit_s`` built with the official file as ``checkpoint_path``."""
    return create_model("lvvit_s", checkpoint_path=str(official["bare"]))


@pytest.fixture(scope="module")
def converted(official):
    """The CLI's result, and its ``.ckpt`` loaded into ``ppt_lvvit_s`` (with source maps, for probe)."""
    stdout, stderr = official["proc"].communicate(timeout=300)
    result = ToolResult(official["proc"].args, official["proc"].returncode, stdout, stderr)
    assert result.returncode == 0, result
    return result, create_model("ppt_lvvit_s", checkpoint_path=str(official["converted"]), trace_source=True)


@pytest.fixture(scope="module")
def real_images(official):
    """Two images and their stem output under the official-layout weights (reference)."""
    images = random_images(2, seed=5)
    return images, embed_images(official["params"], images)


def test_official_checkpoint_loads_strictly(official, loaded):
    assert_params_are(loaded, official["params"])
    # 26.15 M values, the TokenLabeling README's count (BatchNorm statistics included)
    assert sum(v.size for v in official["params"].values()) == 26_152_208


def test_cli_conversion_loads_into_ppt_model(official, converted):
    result, model = converted
    assert "lvvit_s" in result.stdout and "Traceback" not in result.stderr
    assert_params_are(model, official["params"])


def test_gmacs(loaded, converted):
    """Hand count (multiply-accumulates of the convolutions and matmuls): stem at 112 x 112, 16 blocks of
    197 tokens (attention 4NC^2 + 2N^2C, MLP ratio 3: 6NC^2), class and auxiliary heads on all 197 tokens."""
    stem = 112 * 112 * (3 * 49 * 64 + 2 * 64 * 9 * 64) + 196 * 64 * 64 * 384
    n, c = 197, 384
    block = 4 * n * c * c + 2 * n * n * c + 6 * n * c * c
    assert model_gmacs(loaded) == pytest.approx((stem + 16 * block + n * c * 1000) / 1e9, rel=1e-12)
    # the paper's 6.6 G (TokenLabeling's counter adds the element-wise ops: 6.57 G; here 6.55 G)
    assert model_gmacs(loaded) == pytest.approx(6.6, abs=0.07)
    ppt = converted[1]  # ppt_lvvit_s
    assert [n_out for _, n_out in ppt.token_schedule][4:13:4] == [147, 97, 49]
    assert model_gmacs(ppt) == pytest.approx(4.597, abs=5e-4)


def test_parity_lvvit_s_official_file_dense(official, loaded, real_images):
    assert ms.get_context("mode") == ms.GRAPH_MODE
    images, tokens = real_images
    ref = reference_forward(official["params"], tokens=tokens, num_heads=6)
    loaded.set_train(False)
    logits = loaded(ms.Tensor(images)).asnumpy()
    assert check("lvvit_s dense", Run.from_model("mindppt", logits, [], None),
                 Run.from_reference("reference", *ref, None)).all()


def test_parity_ppt_lvvit_s_converted_weights(official, converted, real_images):
    """The real ppt_lvvit_s with the CLI-converted weights: one image pooled, one pruned at block 4."""
    _, model = converted
    images, tokens = real_images
    _, infos = reference_forward(official["params"], tokens=tokens, num_heads=6, threshold=0.0, **PPT)
    threshold = threshold_between(infos[0]["variance"], 1)
    ref = reference_forward(official["params"], tokens=tokens, num_heads=6, threshold=threshold, **PPT)
    model.set_threshold(threshold)
    logits, infos = probe(model, images)
    check("ppt_lvvit_s mixed", Run.from_model("mindppt", logits, infos, threshold),
          Run.from_reference("reference", *ref, threshold))
    assert sorted(ref[1][0]["pool"].tolist()) == [False, True]  # and ours follows by the policy rule


# --------------------------------------------------------------------------------------------
# Narrow LV-ViT: every policy
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def narrow():
    """Narrow LV-ViT weights, six images, their stem output (reference), the threshold that pools three
    of them at block 4, and one PPT model (the threshold is a Parameter: one graph serves every case)."""
    params = random_lvvit_params(0, **NARROW)
    images = random_images(6, seed=11)
    tokens = embed_images(params, images)
    _, infos = reference_forward(params, tokens=tokens, num_heads=6, threshold=0.0, **PPT)
    model = create_model("lvvit_s", trace_source=True, threshold=0.0, **NARROW, **PPT)
    load_state_dict_into_model(model, params)
    return dict(params=params, images=images, tokens=tokens, split=threshold_between(infos[0]["variance"], 3),
                model=model)


@pytest.mark.parametrize("case", list(CASES))
def test_parity_narrow_lvvit(case, narrow):
    assert ms.get_context("mode") == ms.GRAPH_MODE
    threshold = narrow["split"] if CASES[case] == "split" else CASES[case]
    ref = reference_forward(narrow["params"], tokens=narrow["tokens"], num_heads=6, threshold=threshold, **PPT)
    narrow["model"].set_threshold(threshold)
    logits, infos = probe(narrow["model"], narrow["images"])
    ours = Run.from_model("mindppt", logits, infos, threshold)
    check(case, ours, Run.from_reference("reference", *ref, threshold))
    assert_policy_case(case, ours, Run.from_reference("reference", *ref, threshold))
    if case == "mixed":
        assert ref[1][0]["pool"].sum() == 3


# --------------------------------------------------------------------------------------------
# The token-labelling head at inference
# --------------------------------------------------------------------------------------------

class LogitsAndFeatures(nn.Cell):
    """The model's output and, computed separately, its final features (one graph)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, x):
        features, _ = self.model.forward_features(x)
        return self.model(x), features


def dense_bound(x, weight, bias):
    """|float32 x @ W.T + b - exact| for float32 inputs: a dot product of length C, plus the bias."""
    return (x.shape[-1] + 2) * U32 * (np.abs(x) @ np.abs(weight).T + np.abs(bias))


def test_inference_adds_half_the_aux_head_maximum():
    """Small LV-ViT (64 px: 16 patches and the class token, 2 blocks) with r=4 at block 0: the maximum runs
    over the 12 tokens left."""
    config = dict(embed_dim=48, depth=2, num_heads=3, num_classes=10, img_size=64)
    model = create_model("lvvit_s", r_tokens=4, pp_loc_list=(0,), threshold=0.0, **config)
    load_state_dict_into_model(model, random_lvvit_params(2, **config))
    model.set_train(False)
    logits, features = LogitsAndFeatures(model)(ms.Tensor(random_images(3, seed=3, size=64)))
    logits, features = logits.asnumpy().astype(np.float64), features.asnumpy().astype(np.float64)
    assert features.shape == (3, 13, 48)
    params = {p.name: p.asnumpy().astype(np.float64) for _, p in model.parameters_and_names()}
    w, b, wa, ba = (params[n] for n in ("head.weight", "head.bias", "aux_head.weight", "aux_head.bias"))
    cls_term = features[:, 0] @ w.T + b
    expected = cls_term + 0.5 * (features[:, 1:] @ wa.T + ba).max(axis=1)
    bound = dense_bound(features[:, 0], w, b) + 0.5 * dense_bound(features[:, 1:], wa, ba).max(axis=1) \
        + 4 * U32 * np.abs(expected)
    assert np.all(np.abs(logits - expected) <= bound)
    assert np.abs(cls_term - expected).max() > 100 * bound.max()  # the aux term matters in this check
