"""Which MindSpore primitives our graphs contain, and on which backends MindSpore documents them.

No Ascend or GPU is needed: the graphs are compiled on any backend (here CPU) with MindSpore's IR dump
restricted to the ``validate`` pass, the last front-end pass (device-independent: what the Ascend/GPU
back ends receive), and every primitive call is read from that text IR together with the cell scope and
source line it comes from. Each primitive is then looked up in MindSpore's own documentation as
installed: the ``Supported Platforms:`` section of the primitive's class docstring, else of the
function its docstring refers to (``Refer to :func:`mindspore.ops.xxx```). ``op_support_extra.yaml``
(next to this file) covers what has no such docstring -- graph-only nodes (``Load``, ``UpdateState``,
``MakeTuple``, ``TupleGetItem``), the control-flow ``Switch``, the scalar forms ``Muls``/``Divs``
and gradient primitives -- each entry citing the documentation page it comes from.

The graphs are the evaluation network and the trainer's own training step
(:func:`mindppt.engine.trainer.build_recipe_step`) with dynamic loss scaling, gradient clipping and EMA on,
under the recipes' O2 mixed precision (:func:`build_graph_cells`). Every piece of that step is
device-independent (its overflow check is ``IsFinite`` on the gradients' sum of squares, not
``mindspore.amp.all_finite``, which picks its primitives by backend).

Used by ``tests/test_op_support.py`` and, through :func:`op_support_report`, ``tools/op_support.py`` (which
writes the table of docs/ascend_gpu.md).
"""
import glob
import os
import re
import tempfile
from collections import OrderedDict

import mindspore as ms
import numpy as np
import yaml
from mindspore import ops

from mindppt.device import setup_device
from mindppt.engine.build import build_model
from mindppt.engine.cli import parse_cli
from mindppt.engine.trainer import build_recipe_step
from mindppt.errors import OutputError
from mindppt.io import atomic_write
from mindppt.models import fused_cpu
from mindppt.models.amp import apply_amp

PLATFORMS = ("Ascend", "GPU", "CPU")
EXTRA_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "op_support_extra.yaml")
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                    "ascend_gpu.md")
DOCS_BEGIN, DOCS_END = "<!-- op-support:begin -->", "<!-- op-support:end -->"
DEFAULT_MODELS = ("ppt_deit_small_patch16_224", "deit_small_patch16_224")
BASES = ("documented", "virtual", "control_flow", "gradient")

_NODE = re.compile(r"^\s*%\d+\([^)]*\) = (?:PrimFunc_)?([A-Za-z_][A-Za-z0-9_]*)\(")
_SCOPE = re.compile(r"# Fullname with scope: \((.*)\)")
_IN_FILE = re.compile(r"# In file (\S+?):(\d+)")
_PLATFORMS = re.compile(r"Supported Platforms:\s*((?:``\w+``[\s,]*)+)")
_REFER = re.compile(r"[Rr]efer to :(?:func|class):`~?(mindspore\.[\w.]+)`")


# --------------------------------------------------------------------------------------------
# Collecting primitives from a compiled graph
# --------------------------------------------------------------------------------------------

def _is_ours(path, project_root):
    path = os.path.abspath(path)
    return path.startswith(project_root + os.sep) and "site-packages" not in path


def parse_ir(text, project_root=None):
    """``{primitive: [origin, ...]}`` from a MindSpore text IR. An origin is the node's cell scope plus
    the innermost source line of the node that lies under ``project_root``."""
    prims = OrderedDict()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _NODE.match(line)
        if not match:
            continue
        name = match.group(1)
        scope, where = "", ""
        for follow in lines[i + 1:i + 60]:
            stripped = follow.strip()
            if _NODE.match(follow) or not (stripped.startswith("#") or stripped.startswith(":")):
                break
            m_scope = _SCOPE.search(follow)
            if m_scope and not scope:
                scope = m_scope.group(1)
            m_file = _IN_FILE.search(follow)
            if m_file and project_root and _is_ours(m_file.group(1), project_root):
                # Source lines run from the outermost call inwards: keep the innermost of ours.
                where = f"{os.path.relpath(m_file.group(1), project_root)}:{m_file.group(2)}"
        origin = " ".join(part for part in (scope, where) if part)
        origins = prims.setdefault(name, [])
        if origin and origin not in origins:
            origins.append(origin)
    return prims


def collect_primitives(cell, *inputs, project_root=None):
    """Compile ``cell`` on ``inputs`` (nothing is run) and return ``{primitive: [origins]}`` of its
    front-end graph. The IR dump is limited to the ``validate`` pass and written to a temporary
    directory; the context's ``save_graphs`` settings and the environment are restored afterwards."""
    if project_root is None:
        project_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    old_env = os.environ.get("MS_DEV_DUMP_IR_PASSES")
    old_save = ms.get_context("save_graphs")
    old_path = ms.get_context("save_graphs_path")
    with tempfile.TemporaryDirectory(prefix="mindppt_ir_") as tmp:
        # The context settings, not MS_DEV_SAVE_GRAPHS/_PATH: MindSpore 2.10 caches those environment
        # variables, so after restoring them it keeps dumping, into the working directory.
        os.environ["MS_DEV_DUMP_IR_PASSES"] = "validate"
        try:
            ms.set_context(save_graphs=1, save_graphs_path=tmp)
            cell.compile(*inputs)
        finally:
            ms.set_context(save_graphs=old_save, save_graphs_path=old_path)
            if old_env is None:
                os.environ.pop("MS_DEV_DUMP_IR_PASSES", None)
            else:
                os.environ["MS_DEV_DUMP_IR_PASSES"] = old_env
        files = sorted(glob.glob(os.path.join(tmp, "**", "*validate*.ir"), recursive=True))
        if not files:
            raise RuntimeError(f"MindSpore wrote no validate IR under {tmp}: "
                               f"{sorted(os.listdir(tmp))}")
        prims = OrderedDict()
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as handle:
                for name, origins in parse_ir(handle.read(), project_root).items():
                    merged = prims.setdefault(name, [])
                    merged.extend(o for o in origins if o not in merged)
    return prims


# --------------------------------------------------------------------------------------------
# The graphs we ship
# --------------------------------------------------------------------------------------------

# The training features of the recipes, all on, so that their primitives are checked: dynamic loss
# scaling (the recipes' default; the overflow check and nn.DynamicLossScaleUpdateCell), global-norm gradient
# clipping and the EMA of the weights (both options of every recipe).
TRAIN_OPTIONS = ("--loss_scale_type", "dynamic", "--clip_grad", "true", "--clip_value", "1.0", "--ema", "true")


def recipe_args(model_name, *, img_size=224, num_classes=1000, amp_level="O2", options=TRAIN_OPTIONS):
    """The configuration namespace of a training run of ``model_name`` (the parser's defaults, i.e. the
    DeiT recipe's optimizer, drop path and schedule) with ``options`` (command-line style) on top."""
    return parse_cli(["--model", model_name, "--image_resize", str(img_size), "--num_classes", str(num_classes),
                      "--amp_level", amp_level, "--val_amp_level", amp_level, *options], tool="train")


def build_graph_cells(model_name, *, img_size=224, batch_size=2, num_classes=1000, amp_level="O2",
                      amp_dtype=ms.float16, options=TRAIN_OPTIONS):
    """``{"eval": (cell, inputs), "train": (cell, inputs)}`` for ``model_name``: the evaluation network
    and the trainer's own training step (:func:`mindppt.engine.trainer.build_recipe_step`: ``TrainStep``
    with the recipe's AdamW on a per-step lr table, soft-target cross entropy, drop path, and with
    ``options`` -- by default dynamic loss scaling, gradient clipping and EMA), both built by the
    trainer's ``build_model`` and put under ``apply_amp(amp_level, amp_dtype)`` as the trainer does.
    The inputs are images and soft targets of shape ``(batch_size, num_classes)``, as the training
    pipeline (mixup / label smoothing) feeds them."""
    args = recipe_args(model_name, img_size=img_size, num_classes=num_classes, amp_level=amp_level,
                       options=options)
    images = ms.Tensor(np.zeros((batch_size, 3, img_size, img_size), np.float32))
    targets = ms.Tensor(np.full((batch_size, num_classes), 1.0 / num_classes, np.float32))

    with fused_cpu.disabled():  # the portable graph that Ascend and GPU run (fused kernels are CPU-only)
        eval_model = build_model(args, for_eval=True, with_weights=False)
        train_model = build_model(args)
    eval_net = apply_amp(eval_model, args.amp_level, amp_dtype)
    eval_net.set_train(False)

    step = build_recipe_step(args, train_model, amp_dtype=amp_dtype).step
    step.set_train(True)
    return {"eval": (eval_net, (images,)), "train": (step, (images, targets))}


# --------------------------------------------------------------------------------------------
# Documented platforms
# --------------------------------------------------------------------------------------------

def platforms_in(doc):
    """The platforms of a docstring's ``Supported Platforms:`` section, or None."""
    if not doc:
        return None
    match = _PLATFORMS.search(doc)
    if not match:
        return None
    return tuple(re.findall(r"``(\w+)``", match.group(1)))


def resolve(dotted):
    """The object ``mindspore.a.b`` names; ``mindspore.ops.x`` also looks in ``ops.auto_generate``
    (where MindSpore 2.10 keeps functions such as ``sum_ext`` that its docstrings refer to)."""
    parts = dotted.split(".")
    if parts[0] != "mindspore":
        return None
    candidates = [parts[1:]]
    if parts[1:2] == ["ops"] and len(parts) == 3:
        candidates.append(["ops", "auto_generate", parts[2]])
    for path in candidates:
        obj = ms
        for part in path:
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


def _primitive_class(name):
    for module in (ops.operations, ops.auto_generate, ops):
        obj = getattr(module, name, None)
        if isinstance(obj, type) and issubclass(obj, ops.Primitive):
            return obj, f"{obj.__module__}.{obj.__name__}"
    return None, None


def docstring_platforms(name):
    """``(platforms, where)`` from the installed docstrings only: the primitive class's own
    ``Supported Platforms``, else that of the function its docstring refers to; ``(None, why)``."""
    cls, cls_path = _primitive_class(name)
    if cls is None:
        return None, "no primitive class of this name in mindspore.ops"
    platforms = platforms_in(cls.__doc__)
    if platforms:
        return platforms, f"docstring of {cls_path}"
    refer = _REFER.search(cls.__doc__ or "")
    if refer:
        platforms = platforms_in(getattr(resolve(refer.group(1)), "__doc__", None))
        if platforms:
            return platforms, f"docstring of {refer.group(1)} (referred to by {cls_path})"
        return None, f"{cls_path} refers to {refer.group(1)}, whose docstring lists no platforms"
    return None, f"{cls_path} has no 'Supported Platforms'"


def load_extra(path=EXTRA_TABLE):
    """The checked-in table for primitives without a usable docstring: ``{name: entry}``."""
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    table = {}
    for name, entry in (data.get("primitives") or {}).items():
        missing = [key for key in ("platforms", "source", "basis") if key not in entry]
        if missing:
            raise ValueError(f"{path}: entry {name!r} lacks {', '.join(missing)}")
        if not str(entry["source"]).startswith("https://"):
            raise ValueError(f"{path}: entry {name!r} must cite a documentation URL, got {entry['source']!r}")
        if entry["basis"] not in BASES:
            raise ValueError(f"{path}: entry {name!r} has unknown basis {entry['basis']!r}")
        if entry["basis"] == "gradient" and "forward" not in entry:
            raise ValueError(f"{path}: gradient entry {name!r} must name its forward primitive")
        table[name] = entry
    return table


def documented_platforms(name, extra=None):
    """``(platforms tuple, where it is documented)`` for primitive ``name``, or ``(None, reason)``:
    the installed docstrings first, then ``op_support_extra.yaml``."""
    platforms, where = docstring_platforms(name)
    if platforms:
        return platforms, where
    extra = load_extra() if extra is None else extra
    if name in extra:
        entry = extra[name]
        label = {"virtual": "graph-only node", "control_flow": "control flow",
                 "gradient": f"bprop of {entry.get('forward')}", "documented": "documented"}[entry["basis"]]
        return tuple(entry["platforms"]), f"{label}: {entry['source']}"
    return None, f"{where}, and no entry in {os.path.basename(EXTRA_TABLE)}"


def support_table(primitives, extra=None):
    """Rows ``(name, platforms or None, source, origins)`` sorted by name."""
    extra = load_extra() if extra is None else extra
    rows = []
    for name in sorted(primitives):
        platforms, source = documented_platforms(name, extra)
        rows.append((name, platforms, source, list(primitives[name])))
    return rows


def missing_platforms(rows, required=("Ascend", "GPU")):
    """Rows whose documented platforms lack one of ``required`` (or that are undocumented)."""
    return [row for row in rows if row[1] is None or any(p not in row[1] for p in required)]


def describe(row, max_origins=3):
    """One line per problem row: name, what is documented, and where it comes from in our graphs."""
    name, platforms, source, origins = row
    shown = "; ".join(origins[:max_origins]) + (f"; ... ({len(origins)} places)" if len(origins) > max_origins else "")
    return f"{name}: documented for {', '.join(platforms) if platforms else 'nothing'} ({source}); from {shown}"


def markdown_table(rows):
    """The docs/ascend_gpu.md table: primitive, Ascend, GPU, CPU, where it is documented."""
    out = ["| primitive | Ascend | GPU | CPU | documented in |", "| --- | :-: | :-: | :-: | --- |"]
    for name, platforms, source, _ in rows:
        marks = ["yes" if platforms and p in platforms else "**no**" for p in PLATFORMS]
        out.append(f"| `{name}` | {' | '.join(marks)} | {source} |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The report of tools/op_support.py
# --------------------------------------------------------------------------------------------

def union_primitives(graphs):
    """``{primitive: origins}`` over ``graphs`` (``{(model, kind): collect_primitives(...)}``), each origin
    prefixed with ``[model kind]``."""
    union = {}
    for (model, kind), primitives in graphs.items():
        for name, origins in primitives.items():
            union.setdefault(name, []).extend(f"[{model} {kind}] {o}" for o in origins)
    return union


def collect_graphs(models, *, img_size=224, amp_level="O2", progress=None):
    """:func:`collect_primitives` of the evaluation and training graphs of every model in ``models``, as
    ``{(model, kind): primitives}``. ``progress``: called with a line before each compilation."""
    graphs = {}
    for model in models:
        for kind, (cell, inputs) in build_graph_cells(model, img_size=img_size, batch_size=2,
                                                      amp_level=amp_level).items():
            if progress is not None:
                progress(f"compiling {model} {kind} ({amp_level}, {img_size} px)")
            graphs[(model, kind)] = collect_primitives(cell, *inputs)
    return graphs


def write_docs_table(table, path=DOCS):
    """Replace the table between the op-support markers of ``path`` (OutputError when it lacks them)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise OutputError(f"{path} lacks the {DOCS_BEGIN} / {DOCS_END} markers: nowhere to put the table")
    block = f"{DOCS_BEGIN}\n{table}\n{DOCS_END}"
    text = re.sub(re.escape(DOCS_BEGIN) + r".*?" + re.escape(DOCS_END), lambda _: block, text, flags=re.S)
    atomic_write(path, text)


def op_support_report(models=DEFAULT_MODELS, *, img_size=224, amp_level="O2", device_target="CPU",
                      write_docs=None, progress=None):
    """Compile the graphs of ``models`` on ``device_target`` (graph mode) and return ``{"table"`` (markdown),
    ``"gaps"`` (rows not documented for Ascend and GPU, see :func:`describe`)``}``; ``write_docs``: a
    markdown file whose op-support table is replaced by this one (:func:`write_docs_table`). Raises
    DeviceUnavailableError for a backend this MindSpore cannot load."""
    setup_device(device_target, mode="graph")
    graphs = collect_graphs(models, img_size=img_size, amp_level=amp_level, progress=progress)
    rows = support_table(union_primitives(graphs))
    table = markdown_table(rows)
    if write_docs:
        write_docs_table(table, write_docs)
    return {"table": table, "gaps": missing_platforms(rows)}
