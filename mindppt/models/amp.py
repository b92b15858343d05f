"""Mixed precision for DeiT/PPT that keeps PPT's decisions in float32.

``apply_amp(model, amp_level, dtype)`` runs MindSpore's own ``mindspore.amp.auto_mixed_precision`` and
then re-pins, with ``Cell.to_float``, the cells whose precision PPT depends on. What MindSpore 2.10
does by itself (``mindspore/train/amp.py``, the default non-rewrite path):

* O2 calls ``to_float(dtype)`` on every cell and wraps only the cells of its black list
  (``nn.BatchNorm1d/2d/3d``, ``nn.LayerNorm``) in fp32. Our ``LayerNorm`` (timm parameter names) and
  ``TokenCompression`` are plain ``nn.Cell`` subclasses, so O2 puts them in fp16 like everything else.
  In graph mode ``to_float`` casts every floating input of a cell, its Parameters and its Tensor
  attributes, so under plain O2 the scores, their variance, the threshold test and the sizes would be
  computed in fp16 (with ``trace_source`` plain O2 does not even compile: an fp16 assignment matrix
  meets the fp32 source map in a BatchMatMul).
* O3 calls ``to_float(dtype)`` on the whole network.
* O1 rewrites the network's source with ``mindspore.rewrite`` to cast white-listed cells and primitive
  calls (Dense, MatMul, BatchMatMul, ...). That parser is fragile on this model: with
  ``trace_source=True`` it fails on a pyboost primitive (``TypeError: ... got _PyboostBroadcastToPrim``),
  and it would break again whenever model code uses such a call. So O1 here is cell-level: every
  ``nn.Dense`` (the only cell of MindSpore's O1 white list that our models call) computes in the low
  dtype and hands float32 back, as MindSpore's O1 does (the MLP's first Dense includes its GELU, as
  ``nn.Dense(activation=...)`` would: that GELU runs in the low dtype too); the primitive calls inside
  our own cells (patch-embedding MatMul, attention BatchMatMuls) and everything else stay float32.

After that, for O2 and O3 this module pins:

* ``TokenCompression`` to float32: significance scores, their variance, the threshold comparison,
  the assignment matrices, token sizes and the size-weighted merge.
* The ``Block`` and ``Attention`` *shells* to float32, with each child cell (Dense layers, MLP,
  DropPath, dropouts) set back to the low dtype. A cell's flag casts its inputs, so this keeps the
  per-token ``size`` in float32 all the way to ``log(size)`` (under bf16 integers above 256 would
  round), and the residual stream ``x + f(x)`` adds in float32 (as PyTorch autocast does), while every
  matmul still runs in the low dtype.
* O2 only (MindSpore's O2 black list, extended to our cells): ``LayerNorm`` and the attention
  softmax in float32. The attention probabilities handed to the scores are then float32; the
  ``attn_drop`` cell (low dtype) casts them back down for the attention-times-value matmul.

Everything else (patch embedding, q/k/v/proj/MLP/head matmuls, GELU) runs in ``dtype``. Works in
GRAPH_MODE and PYNATIVE_MODE on CPU, GPU and Ascend (fp16 kernels for every op of the model exist on
CPU; bf16: see tests/test_amp.py).
"""
import mindspore as ms
from mindspore import nn, ops

from .ppt import TokenCompression
from .vit import Attention, Block, LayerNorm, Softmax

AMP_LEVELS = ("O0", "O1", "O2", "O3")
AMP_DTYPES = {"float16": ms.float16, "fp16": ms.float16, "bfloat16": ms.bfloat16, "bf16": ms.bfloat16}


def resolve_dtype(dtype):
    """``ms.float16`` / ``ms.bfloat16`` or one of their names."""
    if isinstance(dtype, str):
        if dtype.lower() not in AMP_DTYPES:
            raise ValueError(f"amp dtype {dtype!r} is not one of {', '.join(AMP_DTYPES)}")
        return AMP_DTYPES[dtype.lower()]
    if dtype not in (ms.float16, ms.bfloat16):
        raise ValueError(f"amp dtype must be float16 or bfloat16, got {dtype}")
    return dtype


def _children(cell):
    return list(cell.name_cells().values())


def _fp32_shell(cell, dtype):
    """``cell`` itself in float32 (its inputs are cast up), every child cell in ``dtype``."""
    cell.to_float(ms.float32)
    for child in _children(cell):
        child.to_float(dtype)


def pin_ppt_precision(model, amp_level, dtype=ms.float16):
    """Re-pin the precision-critical cells of ``model`` after a mixed-precision pass (see module doc).

    Order matters because ``to_float`` is recursive: shells first, then the cells inside them."""
    dtype = resolve_dtype(dtype)
    cells = [cell for _, cell in model.cells_and_names()]
    for cell in cells:
        if isinstance(cell, Block):
            _fp32_shell(cell, dtype)
    for cell in cells:
        if isinstance(cell, Attention):
            _fp32_shell(cell, dtype)
            if amp_level == "O2":
                for child in _children(cell):
                    if isinstance(child, (Softmax, nn.Softmax)):
                        child.to_float(ms.float32)
    for cell in cells:
        if isinstance(cell, TokenCompression):
            cell.to_float(ms.float32)
        elif amp_level == "O2" and isinstance(cell, (LayerNorm, nn.LayerNorm)):
            cell.to_float(ms.float32)
    return model


def precision_map(model):
    """``{cell name: 'fp32' | 'fp16' | 'bf16' | None}`` as set by ``to_float`` (None: not set)."""
    out = {}
    for name, cell in model.cells_and_names():
        flag = None
        for key in ("fp32", "fp16", "bf16"):
            if getattr(cell, key, False):
                flag = key
        out[name] = flag
    return out


class _Float32Output(nn.Cell):
    """Runs ``cell`` and casts its (Tensor) output to float32; parameter names are unchanged."""

    def __init__(self, cell):
        super().__init__(auto_prefix=False)
        self.cell = cell

    def construct(self, *args):
        return ops.cast(self.cell(*args), ms.float32)


def _cell_level_o1(model, dtype):
    # Of MindSpore's O1 white list our models *call* only nn.Dense (PatchEmbed keeps a Conv2d for its
    # parameters but computes with a MatMul, and reads ``proj.weight``, so the Conv2d is not wrapped).
    for _, parent in list(model.cells_and_names()):
        for name, child in list(parent.name_cells().items()):
            if isinstance(child, nn.Dense) and not isinstance(parent, _Float32Output):
                child.to_float(dtype)
                parent._cells[name] = _Float32Output(child)  # pylint: disable=protected-access
    return model


def apply_amp(model, amp_level="O0", dtype=ms.float16):
    """Mixed precision for a DeiT/PPT ``model`` that keeps PPT's decision path in float32.

    Returns the network to train/evaluate: for O2/O3 MindSpore's wrapper that casts the output to
    float32 (``model`` itself is changed in place and can still be called directly, e.g. by
    ``inspect_compression``); for O0 and O1 ``model`` itself (changed in place).
    When the result goes to ``mindspore.amp.build_train_network`` or ``Model``, pass level ``O0``
    there (MindSpore's rule for networks already converted)."""
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level {amp_level!r} is not one of {', '.join(AMP_LEVELS)}")
    dtype = resolve_dtype(dtype)
    if amp_level == "O0":
        return model
    if amp_level == "O1":
        return _cell_level_o1(model, dtype)
    network = ms.amp.auto_mixed_precision(model, amp_level, dtype=dtype)
    pin_ppt_precision(model, amp_level, dtype)
    return network
