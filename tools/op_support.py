"""Which MindSpore primitives our eval graph and real training step (TrainStep with dynamic loss scaling,
gradient clipping and EMA) contain, and where MindSpore documents them for Ascend / GPU / CPU. Compiles the
graphs on this machine's backend (CPU is fine; nothing runs).

    python tools/op_support.py                     # print the table and any gap
    python tools/op_support.py --write-docs        # refresh the table in docs/ascend_gpu.md
    python tools/op_support.py --models ppt_deit_tiny_patch16_224 --image_resize 64 --amp_level O0

Exit status 1 when a primitive is not documented for Ascend and GPU (it is printed with the cell scope
and source line it comes from). See mindppt/checks/op_support.py.
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.checks.op_support import DEFAULT_MODELS, DOCS, describe, op_support_report  # noqa: E402
from mindppt.config import add_options, tool_parser  # noqa: E402
from mindppt.engine.cli import run_tool  # noqa: E402


def parse_args(argv=None):
    parser = tool_parser("tools/op_support.py", __doc__)
    own = parser.add_argument_group("op_support")
    own.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registered model names")
    own.add_argument("--write-docs", action="store_true", help="replace the table in docs/ascend_gpu.md")
    # O2 (the recipes') holds every primitive of the fp32 graphs plus Cast; the front-end graph read here is
    # the same on every backend
    add_options(parser.add_argument_group("model and device"), ("image_resize", "amp_level", "device_target"),
                defaults={"image_resize": 224, "amp_level": "O2"})
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = op_support_report(args.models, img_size=args.image_resize, amp_level=args.amp_level,
                               device_target=args.device_target, write_docs=DOCS if args.write_docs else None,
                               progress=lambda line: print(line, file=sys.stderr))
    print(report["table"])
    for row in report["gaps"]:
        print("NOT DOCUMENTED FOR ASCEND AND GPU: " + describe(row), file=sys.stderr)
    if args.write_docs:
        print(f"{DOCS} updated", file=sys.stderr)
    return 1 if report["gaps"] else 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
