"""Throughput and memory benchmark in GRAPH_MODE (``--help`` for the options; the logic is
:func:`mindppt.engine.benchmark.run_benchmark`).

  python tools/benchmark.py --models deit_small_patch16_224 ppt_deit_small_patch16_224 \\
      --batch_size 1 8 32 [--train] [--isolate] [--exported] [--amp_level O2] [--json OUT.json]
  python tools/benchmark.py --models all --batch_size 32 --isolate --markdown zoo.md --json zoo.json
"""
import os
import shlex
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.benchmark import parse_options, run_benchmark  # noqa: E402
from mindppt.engine.cli import run_tool  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    options = parse_options(argv)
    _, report = run_benchmark(options, "python tools/benchmark.py " + shlex.join(argv),
                              out=lambda line: print(line, flush=True))
    print()
    print(report, end="")
    for path in (options.json, options.markdown):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
