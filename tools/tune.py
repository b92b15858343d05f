r"""Tune PPT to a budget: r per block, the compression blocks and per-block thresholds for one target,
chosen on calibration images and proven on held-out ones.

  python tools/tune.py -c CONFIG --ckpt_path CKPT --out DIR (--target_gmacs G | --target_ratio R |
      --target_speedup S | --max_drop P) [--budget N] [--calib_images N] [--seed S] [--blocks 1,2,3]
      [--uniform_r] [--policy adaptive prune pool] [--compare_random SEED ...]

Targets: at most G GMACs per image; at most R (in (0, 1]) times the dense model's GMACs; at least S times
the dense model's img/s (measured here at the config's batch size); or the cheapest setting whose top-1 is
at most P points below the dense model's. The images of data_dir/val_split are split (seeded) into
--calib_images calibration images, the only ones the search sees, and the rest, held out.

The search (docs/tuning.md) evaluates at most --budget settings: each allowed policy (pool-only,
prune-only, adaptive), the config's and the paper's block positions and every block, then local moves
(a block's pooled share up or down, a block moved, added or dropped, r shifted between blocks), r always
re-fitted to the target; thresholds are calibrated from pooled shares as tools/analyze.py does. Writes
into --out: tune.csv (every evaluated setting, a row as each finishes), tune.json, report.txt (the
held-out table: the chosen setting, dense, the paper's default scaled to the same GMACs, pool-only and
prune-only at the chosen GMACs), tuned.yaml (for tools/eval.py -c and tools/train.py -c) and tune.png.
Interrupted, it keeps the evaluated settings; the same command continues without evaluating them again.

--compare_random SEED ... runs the search and random search with the same budget and target once per
seed and prints the held-out top-1 of each one's choice (compare.txt, compare.json).
Every other --key value is a config option (as for tools/eval.py).
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.engine.search import POLICIES  # noqa: E402
from mindppt.engine.signals import sigterm_as_keyboard_interrupt  # noqa: E402
from mindppt.engine.tune import run_comparison, run_tune  # noqa: E402
from mindppt.logger import get_logger  # noqa: E402
from mindppt.option_types import choice, float_type, int_type, list_of, str2bool  # noqa: E402

TARGET_DESTS = {"target_gmacs": "gmacs", "target_ratio": "ratio", "target_speedup": "speedup", "max_drop": "drop"}


def tool_options(p):
    p.add_argument("--out", required=True, help="output directory (a tune.csv there is continued)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target_gmacs", type=float_type(), metavar="G", help="at most G GMACs per image")
    target.add_argument("--target_ratio", type=float_type(), metavar="R",
                        help="at most R times the dense GMACs, R in (0, 1]")
    target.add_argument("--target_speedup", type=float_type(), metavar="S",
                        help="at least S times the dense img/s, measured here at the config's batch size")
    target.add_argument("--max_drop", type=float_type(), metavar="P",
                        help="the cheapest setting at most P top-1 points below dense")
    p.add_argument("--budget", type=int_type(), default=24, metavar="N", help="settings evaluated at most")
    p.add_argument("--calib_images", type=int_type(), default=None, metavar="N",
                   help="calibration images (the rest are held out); default half, at most 5000")
    p.add_argument("--blocks", type=list_of(int_type(lo=0), unique=True, min_length=1), default=None,
                   metavar="B", help="blocks that may compress, comma separated; default all")
    p.add_argument("--uniform_r", type=str2bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="one r for every compression block instead of one per block")
    p.add_argument("--policy", type=choice(*POLICIES), nargs="+", default=list(POLICIES),
                   help="policies the search may use")
    p.add_argument("--compare_random", type=int_type(lo=0), nargs="+", default=None, metavar="SEED",
                   help="compare with random search at the same budget, one run per seed")


def main(argv=None):
    args = opts = parse_cli(argv, tool="tune", description=__doc__, add_tool_options=tool_options)
    kind, value = next((k, getattr(opts, d)) for d, k in TARGET_DESTS.items() if getattr(opts, d) is not None)
    options = dict(budget=opts.budget, calib_images=opts.calib_images, blocks=opts.blocks, uniform_r=opts.uniform_r,
                   policies=list(dict.fromkeys(opts.policy)), logger=get_logger(None, 0))
    sigterm_as_keyboard_interrupt()
    try:
        if opts.compare_random:
            record = run_comparison(args, kind, value, opts.out, opts.compare_random, **options)
        else:
            record = run_tune(args, kind, value, opts.out, **options)
    except KeyboardInterrupt:
        print(f"interrupted: the evaluated settings are kept in {opts.out}; run the same command to continue "
              "(they are not evaluated again)", file=sys.stderr)
        raise
    print(record["text"])
    if opts.compare_random:
        print(f"comparison written to {os.path.join(opts.out, 'compare.txt')} and compare.json")
    else:
        print(f"{record['evaluations']} settings in {record['search_seconds']:.0f}s ({record['evaluated_now']} "
              f"evaluated now); held-out table, tuned.yaml, tune.csv, tune.json and tune.png written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
