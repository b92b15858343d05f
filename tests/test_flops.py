"""GMACs against a direct count of the graph's matmuls.

Every registered model (``list_models()`` at collection, so models registered later are covered) runs one
image in PYNATIVE_MODE while the matmul and convolution primitives count what they compute: output
elements times reduction length, from the tensors they actually receive. The backbone's count (patch
embedding or stem, every block's q/k/v, q k^T, attention x v, projection and MLP, the head(s)) must equal
``flops.model_gmacs(model) * 1e9`` exactly; for a PPT model at threshold 0 (always prune) and at inf
(always pool), the same count. The compression cell's own scoring, matching and assignment products are
not part of the papers' GMACs: they are counted apart and printed (``pytest -s``); on the CPU backend's
fused compression kernels (mindppt.models.fused_cpu) the cell calls no matmul primitive at all, and the
fused gemm kernels (linear layers, attention products, the whole attention) are counted as the matmuls they
replace.
"""
import math
from collections import Counter

import mindspore as ms
import numpy as np
import pytest
from mindspore import ops
from mindspore.common import initializer
from mindspore.ops import auto_generate
from mindspore.ops.primitive import Primitive

from mindppt.models import count_params, create_model, get_pretrained_cfg, list_models
from mindppt.models.flops import model_gmacs
from mindppt.models.ppt import TokenCompression

NUM_CLASSES = 10


def _matmul_depth(prim, args, out):
    a = args[0]
    return a.shape[-2] if getattr(prim, "transpose_a", False) else a.shape[-1]


def _weight_fan_in(prim, args, out):
    return math.prod(args[1].shape[1:])  # Dense (out, in); convolution (out, in / groups, *kernel)


# The fused CPU kernels (mindppt.models.fused_cpu) that multiply matrices, and their multiply-accumulates per
# output element: the first input's last axis for linear layers (x (R, K)), q k^T (q (.., D)) and attention x
# v (attn (.., M)); q k^T and attention x v together (2 N per element of (B, N, C), its first output) for the
# whole attention.
_LAST_AXIS = lambda args: args[0].shape[-1]
GEMM_KERNELS = {"MindpptLinear": _LAST_AXIS, "MindpptLinearResidual": _LAST_AXIS, "MindpptLinearGelu": _LAST_AXIS,
                "MindpptAttentionScores": _LAST_AXIS, "MindpptAttentionValues": _LAST_AXIS,
                **{name: lambda args: 2 * args[0].shape[1] for name in (
                    "MindpptAttention", "MindpptSizeAttention", "MindpptAttentionInternals",
                    "MindpptSizeAttentionInternals")}}


def _custom_depth(prim, args, out):
    depth = GEMM_KERNELS.get(str(prim.func).rpartition(":")[2])
    return 0 if depth is None else depth(args)  # 0: element-wise, normalisation, layout, compression kernels


# Multiply-accumulates per output element, for every matmul-like primitive a model may call.
MAC_PRIMITIVES = {
    ops.MatMul: _matmul_depth, ops.BatchMatMul: _matmul_depth,
    auto_generate.MatMulExt: _matmul_depth, auto_generate.BatchMatMulExt: _matmul_depth,
    auto_generate.Dense: _weight_fan_in, ops.Conv2D: _weight_fan_in, ops.Conv3D: _weight_fan_in,
    auto_generate.Conv1DExt: _weight_fan_in, auto_generate.Conv2DExt: _weight_fan_in,
    auto_generate.Conv3DExt: _weight_fan_in, auto_generate.Conv2DPadding: _weight_fan_in,
    auto_generate.Convolution: _weight_fan_in, ops.Custom: _custom_depth,
}
# Matmul-like primitives this counter does not know how to count: calling one fails the test.
UNCOUNTED_PRIMITIVES = (auto_generate.Addmm, auto_generate.Baddbmm, ops.Einsum, auto_generate.EinsumExt,
                        ops.Conv2DTranspose, auto_generate.ConvTranspose2D, ops.DepthwiseConv2dNative)


def _part(name, cell):
    """Where a primitive's products are booked: the compression cell, the patch embedding (or stem), one
    block, or the rest (head(s), anything else at the top level)."""
    if isinstance(cell, TokenCompression):
        return "compression"
    top = name.split(".")
    if top[0] == "blocks" and len(top) > 1:
        return f"blocks.{top[1]}"
    return "patch_embed" if top[0] == "patch_embed" else "rest"


class MacCounter:
    """While active, every call of a matmul-like primitive adds its multiply-accumulates to the part of
    ``model`` that owns the primitive instance ("unowned" for primitives held by no cell of the model)."""

    def __init__(self, model):
        self.owner = {}
        for name, cell in model.cells_and_names():
            for value in vars(cell).values():
                if isinstance(value, Primitive):
                    self.owner[id(value)] = _part(name, cell)
        self.macs = Counter()
        self.uncounted = []
        self._saved = {}

    def _wrap(self, cls, depth):
        original = self._saved[cls] = cls.__dict__.get("__call__")
        call = cls.__call__
        counter = self

        def counting_call(prim, *args, **kwargs):
            out = call(prim, *args, **kwargs)
            if depth is None:
                counter.uncounted.append(type(prim).__name__)
            else:
                per_output = depth(prim, args, out)
                if per_output:  # per element of the (first) output: the products' result
                    product = out[0] if isinstance(out, tuple) else out
                    counter.macs[counter.owner.get(id(prim), "unowned")] += math.prod(product.shape) * per_output
            return out

        cls.__call__ = counting_call
        return original

    def __enter__(self):
        for cls, depth in MAC_PRIMITIVES.items():
            self._wrap(cls, depth)
        for cls in UNCOUNTED_PRIMITIVES:
            self._wrap(cls, None)
        return self

    def __exit__(self, *exc):
        for cls, original in self._saved.items():
            if original is None:
                del cls.__call__
            else:
                cls.__call__ = original
        self._saved.clear()

    def backbone(self):
        return sum(macs for part, macs in self.macs.items() if part != "compression")


def expected_parts(model):
    """The papers' counting, written out per part: the patch embedding's own count, per block
    attention on the tokens entering it and MLP on those leaving its compression, and the head(s)."""
    dim = model.embed_dim
    parts = {"patch_embed": model.patch_embed.macs(), "rest": model.head_macs()}
    for i, (n_in, n_out) in enumerate(model.token_schedule):
        hidden = model.blocks[i].mlp.fc1.weight.shape[0]
        parts[f"blocks.{i}"] = 4 * n_in * dim * dim + 2 * n_in * n_in * dim + 2 * n_out * dim * hidden
    return parts


_PATTERN = np.random.default_rng(0).uniform(-0.02, 0.02, 65537).astype(np.float32)


def _fast_fill(*bounds_and_arr):
    """Stand-in for MindSpore's in-place truncated-normal and uniform samplers (6.8 s of an 8.5 s DeiT-B
    build): a fixed random pattern of prime period. Weight values do not enter a MAC count; they only
    have to give finite, non-degenerate attention scores."""
    arr = bounds_and_arr[-1]
    arr[...] = np.resize(_PATTERN, arr.shape)


@pytest.fixture(scope="module", autouse=True)
def fast_init():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(initializer, "_init_truncated_normal_inplace", _fast_fill)
        mp.setattr(initializer, "_init_random_uniform_inplace", _fast_fill)
        yield


def count_run(model, image):
    """Backbone parts and compression MACs of one forward pass, and each compression block's policy."""
    pooled = []
    hooks = [cell.register_forward_hook(lambda cell, args, out: pooled.append(bool(out[3][1].asnumpy()[0])))
             for _, cell in model.cells_and_names() if isinstance(cell, TokenCompression)]
    try:
        with MacCounter(model) as counter:
            logits = model(image)
    finally:
        for hook in hooks:
            hook.remove()
    assert logits.shape == (1, NUM_CLASSES)
    assert not counter.uncounted, f"matmul-like primitives this test cannot count: {counter.uncounted}"
    return counter, pooled


@pytest.mark.parametrize("name", list_models())
def test_gmacs_match_direct_count(name, pynative):
    model = create_model(name, num_classes=NUM_CLASSES)
    model.set_train(False)
    # the registered preprocessing feeds this model's input size (checked here, where every model is built)
    assert get_pretrained_cfg(name)["input_size"] == (3, model.img_size, model.img_size)
    image = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, model.img_size, model.img_size), np.float32))
    analytic = model_gmacs(model) * 1e9
    expected = expected_parts(model)
    compressing = bool(model.compression_blocks)
    thresholds = (0.0, math.inf) if compressing else (None,)
    for threshold in thresholds:
        if threshold is not None:
            model.set_threshold(threshold)
        counter, pooled = count_run(model, image)
        counted = {part: counter.macs[part] for part in expected}
        assert "unowned" not in counter.macs, f"matmuls outside the model's cells: {counter.macs['unowned']}"
        assert counted == expected, {p: (counted[p], expected[p]) for p in expected if counted[p] != expected[p]}
        assert counter.backbone() == round(analytic), (counter.backbone(), analytic)
        if compressing:
            assert pooled == [threshold > 0] * len(model.compression_blocks), (threshold, pooled)
            fused = model.blocks[model.compression_blocks[0]].compression.fused_plan is not None
            assert (counter.macs["compression"] == 0) == fused  # matmuls only on the portable path
        else:
            assert pooled == [] and counter.macs["compression"] == 0
        policy = {None: "dense", 0.0: "prune", math.inf: "pool"}[threshold]
        print(f"\n{name:<38} {policy:<5} backbone {counter.backbone() / 1e9:.6f} GMACs (model_gmacs "
              f"{analytic / 1e9:.6f}), compression cell {counter.macs['compression'] / 1e9:.6f} GMACs not counted")


def test_count_params_is_the_published_count_without_run_time_settings():
    # DeiT-T as the DeiT paper and timm count it: 5,717,416 weights
    dense = create_model("deit_tiny_patch16_224")
    ppt = create_model("ppt_deit_tiny_patch16_224")
    assert count_params(dense) == count_params(ppt) == 5_717_416
    # PPT's thresholds are parameters too (one per compression block), but not weights
    every_value = sum(int(p.size) for p in ppt.get_parameters())
    assert every_value == count_params(ppt) + len(ppt.compression_blocks) == count_params(ppt) + 3
