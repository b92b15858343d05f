"""Every primitive of our eval and training graphs is documented by MindSpore for Ascend and GPU.

The graphs of ``ppt_deit_small_patch16_224`` and ``deit_small_patch16_224`` (224 px, O2 mixed precision,
which contains every primitive of the fp32 graphs plus Cast) are compiled on CPU, their primitives read
from the ``validate`` IR and looked up in the installed docstrings / op_support_extra.yaml
(mindppt/utils/op_support.py). A primitive not documented for Ascend or GPU fails with its name, what
is documented, and the cell scope and source line it comes from.
"""
import os
import re

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from mindppt.models import fused_cpu
from mindppt.models.vit import GELU
from mindppt.checks import op_support
from mindppt.checks.op_support import (build_graph_cells, collect_primitives, describe, load_extra,
                                      markdown_table, missing_platforms, platforms_in, resolve,
                                      support_table, docstring_platforms)

MODELS = ("ppt_deit_small_patch16_224", "deit_small_patch16_224")
REQUIRED = ("Ascend", "GPU")

@pytest.fixture(scope="module")
def graphs():
    out = {}
    for model in MODELS:
        cells = build_graph_cells(model, img_size=224, batch_size=2, num_classes=1000, amp_level="O2")
        for kind, (cell, inputs) in cells.items():
            out[(model, kind)] = collect_primitives(cell, *inputs)
    return out


@pytest.fixture(scope="module")
def rows(graphs):
    union = {}
    for (model, kind), prims in graphs.items():
        for name, origins in prims.items():
            union.setdefault(name, []).extend(f"[{model} {kind}] {o}" for o in origins)
    return support_table(union)


def test_graphs_hold_the_expected_primitives(graphs):
    ppt_eval = graphs[("ppt_deit_small_patch16_224", "eval")]
    dense_eval = graphs[("deit_small_patch16_224", "eval")]
    train = graphs[("ppt_deit_small_patch16_224", "train")]
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
    assert set(graphs[("deit_small_patch16_224", "train")]) <= set(train)
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


def test_readme_has_the_current_table(rows, repo_root):
    with open(os.path.join(repo_root, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    match = re.search(r"<!-- op-support:begin -->\n(.*?)\n<!-- op-support:end -->", readme, re.S)
    assert match, "README lacks the op-support markers"
    assert match.group(1).strip() == markdown_table(rows).strip(), \
        "README support table is stale: run `python tools/op_support.py --write-readme`"


# --------------------------------------------------------------------------------------------
# Our GELU (mindppt/models/vit.py) replaces nn.GELU(approximate=False), whose backward emits the
# Ascend-only PowTensorScalar; it must compute the same function and gradient.
# --------------------------------------------------------------------------------------------

class _Weighted(nn.Cell):
    def __init__(self, act):
        super().__init__()
        self.act = act

    def construct(self, x, weight):
        return (self.act(x) * weight).sum()


class _GradOf(nn.Cell):
    """d/dx of sum(act(x) * weight), compiled as one graph."""

    def __init__(self, act):
        super().__init__()
        self.net = _Weighted(act)

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

    reference = nn.GELU(approximate=False)
    theirs = _GradOf(reference)
    for candidate in (portable, GELU()):  # and the fused CPU kernel
        np.testing.assert_allclose(candidate(x).asnumpy(), reference(x).asnumpy(), rtol=0, atol=1e-6)
        ours = _GradOf(candidate)
        np.testing.assert_allclose(ours(x, weight).asnumpy(), theirs(x, weight).asnumpy(), rtol=1e-5, atol=1e-6)
    assert os.listdir(tmp_path) == []
