"""Every primitive of our eval graph and of the trainer's real training step is documented by MindSpore for
Ascend and GPU.

The graphs of ``ppt_deit_tiny_patch16_224`` and ``deit_tiny_patch16_224`` -- the evaluation network and
``mindppt.engine.trainer.build_train_step``'s ``TrainStep`` with dynamic loss scaling, gradient clipping
and EMA on, under O2 mixed precision (which contains every primitive of the fp32 graphs plus Cast) -- are
compiled on CPU, their primitives read from the ``validate`` IR and looked up in the installed docstrings /
op_support_extra.yaml (mindppt/checks/op_support.py). A primitive not documented for Ascend or GPU fails
with its name, what is documented, and the cell scope and source line it comes from.

DeiT-Ti at 64 px holds exactly the primitives of DeiT-S at 224 px (what ``tools/op_support.py`` compiles
for docs/ascend_gpu.md), graph by graph (checked when this test was written), and compiles faster; the
docs table test below would notice if that stopped being true.
"""
import os
import re
import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn
from model_helpers import (
    FUSED_PHI_ULPS,
    GELU_GRAD_ATOL,
    MINDSPORE_PHI_ULPS,
    U32,
    SumOf,
    assert_gelu_close,
    exact_gelu_grad,
    gelu_tolerance,
)

from mindppt.checks import op_support
from mindppt.checks.op_support import (
    build_graph_cells,
    collect_primitives,
    describe,
    docstring_platforms,
    load_extra,
    markdown_table,
    missing_platforms,
    platforms_in,
    resolve,
    support_table,
)
from mindppt.engine.train_step import NetWithLoss, SoftTargetCrossEntropy, TrainStep
from mindppt.errors import OutputError
from mindppt.models import fused_cpu
from mindppt.models.vit import GELU

PPT, DENSE = "ppt_deit_tiny_patch16_224", "deit_tiny_patch16_224"
MODELS = (PPT, DENSE)
IMG_SIZE = 64
REQUIRED = ("Ascend", "GPU")


@pytest.fixture(scope="module")
def cells():
    out = {}
    with warnings.catch_warnings():
        # 16 patches: PPT's default r_tokens is clamped at every compressing block (the path is still compiled)
        warnings.filterwarnings("ignore", message=r".*more than PPT can remove")
        for model in MODELS:
            built = build_graph_cells(model, img_size=IMG_SIZE, batch_size=2, num_classes=1000, amp_level="O2")
            for kind, cell_and_inputs in built.items():
                out[(model, kind)] = cell_and_inputs
    return out


@pytest.fixture(scope="module")
def graphs(cells):
    return {key: collect_primitives(cell, *inputs) for key, (cell, inputs) in cells.items()}


@pytest.fixture(scope="module")
def rows(graphs):
    return support_table(op_support.union_primitives(graphs))


def test_train_graph_is_the_trainers_step(cells):
    for model in MODELS:
        step, (images, targets) = cells[(model, "train")]
        assert type(step) is TrainStep, type(step)
        assert step.use_scaling and step.dynamic and isinstance(step.scale_update, nn.DynamicLossScaleUpdateCell)
        assert step.clip and step.clip_value > 0
        assert step.use_ema and len(step.ema.averages) == len(step.weights)
        assert isinstance(step.network, NetWithLoss) and isinstance(step.network.loss_fn, SoftTargetCrossEntropy)
        assert type(step.optimizer).__name__ == "AdamWeightDecay"
        assert step.training
        # Soft targets, as the training pipeline (mixup / cutmix / label smoothing) feeds them.
        assert images.shape == (2, 3, IMG_SIZE, IMG_SIZE)
        assert targets.shape == (2, 1000) and targets.dtype == ms.float32
        eval_net, _ = cells[(model, "eval")]
        assert not eval_net.training


def _lines(repo_root, path, text):
    """``{"path:line"}`` of the lines of ``path`` that contain ``text`` (origins name lines this way)."""
    with open(os.path.join(repo_root, path), encoding="utf-8") as handle:
        found = {f"{path}:{i}" for i, line in enumerate(handle, 1) if text in line}
    assert found, f"{path} no longer contains {text!r}: update this test"
    return found


def _from(prims, name, where):
    """Whether some node ``name`` comes from one of the source lines ``where`` (or a file, when a str)."""
    origins = prims.get(name, [])
    if isinstance(where, str):
        return any(where in o for o in origins)
    return any(o.rsplit(" ", 1)[-1] in where for o in origins)


def test_train_graph_holds_loss_scaling_clipping_and_ema(graphs, repo_root):
    """The primitives of the features a bare ``nn.TrainOneStepCell`` lacks come from their source lines."""
    step_py = "mindppt/engine/train_step.py"
    # a MultitypeFuncGraph's primitives are attributed to the line that maps it over the gradients
    squares = _lines(repo_root, step_py, "self.hyper_map(_square_sum, grads)")
    finite = _lines(repo_root, step_py, "ops.isfinite(square_sum)")
    scale_update = _lines(repo_root, step_py, "self.scale_update(")
    clip = _lines(repo_root, step_py, "ops.maximum(norm, self.clip_value)")
    unscale_and_clip = _lines(repo_root, step_py, "self.hyper_map(ops.partial(_scale_grad, factor), grads)")
    skip = _lines(repo_root, step_py, "if finite:")
    for model in MODELS:
        train, evaluation = graphs[(model, "train")], graphs[(model, "eval")]
        assert _from(train, "MatMul", squares), (model, train.get("MatMul"))  # each gradient's squares
        assert _from(train, "IsFinite", finite), (model, train.get("IsFinite"))  # overflow check, on their sum
        for name in ("LessEqual", "Maximum", "LogicalOr", "LogicalAnd"):  # nn.DynamicLossScaleUpdateCell
            assert _from(train, name, scale_update), (model, name, train.get(name))
            assert _from(train, name, "DynamicLossScaleUpdateCell"), (model, name, train.get(name))
        assert _from(train, "Switch", skip), (model, train.get("Switch"))  # no update after an overflow
        assert _from(train, "Maximum", clip), (model, train.get("Maximum"))  # global-norm clipping
        assert _from(train, "Mul", unscale_and_clip), (model, train.get("Mul"))  # one multiply per gradient
        for name in ("ReduceAll", "Square"):  # per-gradient checks and squares are gone
            assert name not in train, (model, name, train.get(name))
        assert _from(train, "Assign", "mindppt/engine/ema.py"), (model, train.get("Assign"))  # EMA update
        for name in ("IsFinite", "Switch", "Assign", "AdamWeightDecay"):
            assert name not in evaluation, (model, name)


def test_graphs_hold_the_expected_primitives(graphs):
    ppt_eval = graphs[(PPT, "eval")]
    dense_eval = graphs[(DENSE, "eval")]
    train = graphs[(PPT, "train")]
    # The compression path (scores, policy test, top-k, assignment matrices, per-image select).
    for name in ("TopK", "OneHot", "Less", "Select", "GatherD", "ArgMaxWithValue", "Log"):
        assert name in ppt_eval, name
        assert name not in dense_eval, name
    for name in ("BatchMatMul", "LayerNorm", "Softmax", "Sigmoid", "Cast"):
        assert name in ppt_eval and name in dense_eval, name
    for name in ("AdamWeightDecay", "LayerNormGrad", "SoftmaxBackward", "LogSoftmax", "UniformReal"):
        assert name in train, name
    # The eval graph is contained in the training step, and the dense model in PPT's.
    for model in MODELS:
        assert set(graphs[(model, "eval")]) <= set(graphs[(model, "train")])
    assert set(graphs[(DENSE, "train")]) <= set(train)
    # Origins name our cells and source lines.
    assert any("compression-TokenCompression" in o and "mindppt/models/ppt.py" in o for o in ppt_eval["TopK"])


def test_every_primitive_is_documented_for_ascend_and_gpu(rows):
    problems = missing_platforms(rows, REQUIRED)
    assert not problems, "primitives not documented for Ascend and GPU:\n" + "\n".join(describe(r) for r in problems)
    for name, platforms, source, _ in rows:
        print(f"{name:18s} {','.join(platforms or ()):18s} {source}")


def test_extra_table_is_cited_needed_and_consistent():
    extra = load_extra()
    assert extra
    for name, entry in extra.items():
        assert entry["source"].startswith("https://") and "mindspore" in entry["source"], name
        assert set(entry["platforms"]) <= {"Ascend", "GPU", "CPU"}, name
        # Only primitives whose installed docstrings say nothing belong in the table.
        assert docstring_platforms(name)[0] is None, f"{name} is documented in its docstring: drop the entry"
        if "installed_doc" in entry:
            platforms = platforms_in(getattr(resolve(entry["installed_doc"]), "__doc__", None))
            assert platforms and set(entry["platforms"]) <= set(platforms), (name, platforms)
        if entry["basis"] == "gradient":
            platforms, where = docstring_platforms(entry["forward"])
            assert platforms and set(entry["platforms"]) <= set(platforms), (name, entry["forward"], where)


def test_parse_ir_reads_names_scopes_and_our_source_lines(repo_root):
    text = f"""
  %3(CNode_1) = PrimFunc_TopK(%2, I64(8)) primitive_attrs: {{sorted: Bool(1)}}
      : (<Tensor[Float32], (2, 9)>) -> (<Tuple[Tensor[Float32],Tensor[Int32]]>)
      # Fullname with scope: (Default/blocks-CellList/3-Block/compression-TokenCompression/TopK-op0)
      # In file {repo_root}/mindppt/models/vit.py:249, 15~36/        x = self.forward_features(x)/
      # In file {repo_root}/mindppt/models/ppt.py:104, 22~30/        _, merged_a = ops.topk(/
      # In file {repo_root}/.venv/lib/python3.11/site-packages/mindspore/ops/function/array_func.py:5605
  %4(CNode_2) = TupleGetItem(%3, I64(1))
      # Fullname with scope: (Default/TupleGetItem-op0)
  %5(CNode_3) = @graph_7(%4)
"""
    prims = op_support.parse_ir(text, repo_root)
    assert list(prims) == ["TopK", "TupleGetItem"]
    assert prims["TopK"] == ["Default/blocks-CellList/3-Block/compression-TokenCompression/TopK-op0 "
                             "mindppt/models/ppt.py:104"]
    assert prims["TupleGetItem"] == ["Default/TupleGetItem-op0"]


def test_docs_have_the_current_table(rows, repo_root):
    with open(os.path.join(repo_root, "docs", "ascend_gpu.md"), encoding="utf-8") as handle:
        docs = handle.read()
    match = re.search(r"<!-- op-support:begin -->\n(.*?)\n<!-- op-support:end -->", docs, re.S)
    assert match, "docs/ascend_gpu.md lacks the op-support markers"
    assert match.group(1).strip() == markdown_table(rows).strip(), (
        "the table of docs/ascend_gpu.md is stale: run `python tools/op_support.py --write-docs` (DeiT-S, 224 px); "
        "if it still differs, DeiT-Ti at 64 px (compiled here) no longer holds the same primitives")


def test_report_writes_the_docs_table_between_the_markers(tmp_path):
    """op_support_report (what tools/op_support.py prints and --write-docs writes) for the small digits PPT
    model: the table of its graphs, no gap, and the table put between the markers of a docs file, the
    text around them kept; a file without the markers is refused."""
    docs = tmp_path / "docs.md"
    docs.write_text(f"intro\n{op_support.DOCS_BEGIN}\nold table\n{op_support.DOCS_END}\noutro\n")
    lines = []
    report = op_support.op_support_report(["ppt_vit_digits_patch4_16"], img_size=16, amp_level="O0",
                                          write_docs=str(docs), progress=lines.append)
    assert lines == ["compiling ppt_vit_digits_patch4_16 eval (O0, 16 px)",
                     "compiling ppt_vit_digits_patch4_16 train (O0, 16 px)"]
    assert report["gaps"] == []
    table = report["table"]
    assert table.startswith("| primitive | Ascend | GPU | CPU |") and "| `TopK` | yes | yes | yes |" in table
    assert docs.read_text() == f"intro\n{op_support.DOCS_BEGIN}\n{table}\n{op_support.DOCS_END}\noutro\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    with pytest.raises(OutputError, match="plain.md lacks the <!-- op-support:begin -->"):
        op_support.write_docs_table(table, str(plain))
    assert plain.read_text() == "no markers\n"


# --------------------------------------------------------------------------------------------
# Our GELU (mindppt/models/vit.py) replaces nn.GELU(approximate=False), whose backward emits the
# Ascend-only PowTensorScalar; it must compute the same function and gradient.
# --------------------------------------------------------------------------------------------

class _GradOf(nn.Cell):
    """d/dx of sum(act(x) * weight), compiled as one graph."""

    def __init__(self, act):
        super().__init__()
        self.net = SumOf(act)

    def construct(self, x, weight):
        return ms.grad(self.net)(x, weight)


def test_model_gelu_is_exact_and_documented(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # also checks that collecting leaves no IR dumps behind
    x = ms.Tensor(np.linspace(-6, 6, 1201).astype(np.float32))
    weight = ms.Tensor(np.random.default_rng(0).standard_normal(1201).astype(np.float32))
    assert "PowTensorScalar" in collect_primitives(_GradOf(nn.GELU(approximate=False)), x, weight)
    with fused_cpu.disabled():  # the portable GELU, as Ascend and GPU run it
        portable = GELU()
    assert portable.fused_forward is None
    prims = collect_primitives(_GradOf(portable), x, weight)
    assert "PowTensorScalar" not in prims
    assert not missing_platforms(support_table(prims), REQUIRED)

    # The same function and gradient as nn.GELU: both within their float32 bounds of the exact GELU
    # (model_helpers; relative to float32's precision, whatever the CPU's vectorisation), so within the
    # sum of the bounds of each other.
    reference = nn.GELU(approximate=False)
    theirs = _GradOf(reference)
    xs, w = x.asnumpy().astype(np.float64), weight.asnumpy().astype(np.float64)
    expected = reference(x).asnumpy()
    assert_gelu_close(expected, xs, MINDSPORE_PHI_ULPS, what="nn.GELU")
    fused = GELU()
    for candidate in (portable, fused):  # and the fused CPU kernel
        phi_ulps = FUSED_PHI_ULPS if candidate.fused_forward is not None else MINDSPORE_PHI_ULPS
        both = gelu_tolerance(xs, phi_ulps) + gelu_tolerance(xs, MINDSPORE_PHI_ULPS)
        assert np.all(np.abs(candidate(x).asnumpy() - expected) <= both)
        ours = _GradOf(candidate)
        grad_tol = 2 * GELU_GRAD_ATOL * np.abs(w) + 4 * U32 * np.abs(w * exact_gelu_grad(xs))
        assert np.all(np.abs(ours(x, weight).asnumpy() - theirs(x, weight).asnumpy()) <= grad_tol)
    assert os.listdir(tmp_path) == []
