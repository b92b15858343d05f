"""Which MindSpore primitives our eval graph and real training step (TrainStep with dynamic loss scaling,
gradient clipping and EMA) contain, and where MindSpore documents them for Ascend / GPU / CPU. Compiles the
graphs on this machine's backend (CPU is fine; nothing runs).

    python tools/op_support.py                     # print the table and any gap
    python tools/op_support.py --write-docs        # refresh the table in docs/ascend_gpu.md
    python tools/op_support.py --models ppt_deit_tiny_patch16_224 --img_size 64 --amp_level O0

Exit status 1 when a primitive is not documented for Ascend and GPU (it is printed with the cell scope
and source line it comes from). See mindppt/checks/op_support.py.
"""
import argparse
import os
import re
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.checks.op_support import (  # noqa: E402
    build_graph_cells,
    collect_primitives,
    describe,
    markdown_table,
    missing_platforms,
    support_table,
)
from mindppt.device import DeviceUnavailableError, setup_device  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "ascend_gpu.md")
BEGIN, END = "<!-- op-support:begin -->", "<!-- op-support:end -->"
DEFAULT_MODELS = ("ppt_deit_small_patch16_224", "deit_small_patch16_224")


def collect(models, img_size, amp_level):
    union = {}
    for model in models:
        for kind, (cell, inputs) in build_graph_cells(model, img_size=img_size, batch_size=2,
                                                      amp_level=amp_level).items():
            print(f"compiling {model} {kind} ({amp_level}, {img_size} px)", file=sys.stderr)
            for name, origins in collect_primitives(cell, *inputs).items():
                union.setdefault(name, []).extend(f"[{model} {kind}] {o}" for o in origins)
    return union


def write_table(table, path):
    """Replace the table between the op-support markers of ``path`` (which must have them)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"error: {path} lacks the {BEGIN} / {END} markers")
    block = f"{BEGIN}\n{table}\n{END}"
    text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--amp_level", default="O2", choices=("O0", "O1", "O2", "O3"),
                        help="O2 (default, the recipes') holds every primitive of the fp32 graphs plus Cast")
    parser.add_argument("--write-docs", action="store_true", help="replace the table in docs/ascend_gpu.md")
    parser.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend", "auto"),
                        help="backend to compile on (the front-end graph read here is the same, except for "
                             "the backend-specific overflow check of mindspore.amp.all_finite)")
    args = parser.parse_args(argv)

    try:
        setup_device(args.device_target, mode="graph")
    except DeviceUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = support_table(collect(args.models, args.img_size, args.amp_level))
    table = markdown_table(rows)
    print(table)
    gaps = missing_platforms(rows)
    for row in gaps:
        print("NOT DOCUMENTED FOR ASCEND AND GPU: " + describe(row), file=sys.stderr)
    if args.write_docs:
        write_table(table, DOCS)
        print(f"{os.path.relpath(DOCS, ROOT)} updated", file=sys.stderr)
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
