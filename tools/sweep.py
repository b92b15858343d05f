r"""Accuracy against cost for PPT settings, off the shelf (no training): the paper's Figure 4 and ablation.

  python tools/sweep.py -c CONFIG --ckpt_path CKPT [--data_dir DIR] --r 2 3 4 --thresholds 4e-3 6e-3 \
      [--pp_loc_list 1,2,3 2,3,4] [--policy adaptive prune pool] --out DIR

For every setting (each --r, each --pp_loc_list; each threshold for the adaptive policy, threshold 0 for
prune-only and infinity for pool-only) and the dense model: top-1, top-5, loss on the config's evaluation
data, analytic GMACs, forward img/s (the config's batch size, measured alternately with the dense model)
and the share of images pooled per block. Writes into --out: sweep.csv (a row as each setting finishes),
sweep.txt (the table), sweep.json (rows, Pareto front, adaptive vs single policies per GMACs level) and
sweep.png (top-1 against GMACs per policy, Pareto front ringed, dense star). Interrupted, it keeps the
finished rows; the same command again runs only the settings not yet in sweep.csv.

--r and --thresholds values may be one number or a comma list (one per block / per compression block).
A block removes at most half of its unprotected tokens: rows are labelled with the r each block actually
removes (an r too large for a block is clamped), and requests that come out the same are measured once;
the output says which --r became which r.
Every other --key value is a config option (as for tools/eval.py).
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.engine.signals import sigterm_as_keyboard_interrupt  # noqa: E402
from mindppt.engine.sweep import POLICIES, expand_settings, run_sweep, write_reports  # noqa: E402
from mindppt.errors import ConfigError  # noqa: E402
from mindppt.logger import get_logger  # noqa: E402
from mindppt.option_types import choice, float_or_list, int_or_list, int_type, list_of  # noqa: E402


def tool_options(p):
    p.add_argument("--out", required=True, help="output directory (a sweep.csv there is resumed)")
    p.add_argument("--r", type=int_or_list(lo=0), nargs="+", required=True, metavar="R",
                   help="tokens removed per compression block: an int, or a comma list with one per block")
    p.add_argument("--thresholds", type=float_or_list(lo=0.0), nargs="+", default=None, metavar="T",
                   help="thresholds of the adaptive policy (a float, or a comma list with one per compression "
                        "block); default: the config's eval_threshold")
    p.add_argument("--pp_loc_list", type=list_of(int_type(lo=0), unique=True, min_length=1), nargs="+",
                   default=None, metavar="BLOCKS", dest="pp_loc_lists",
                   help="compression-block lists, each comma separated (1,2,3); default: the config's pp_loc_list")
    p.add_argument("--policy", type=choice(*POLICIES), nargs="+", default=list(POLICIES),
                   help="policies to sweep: adaptive (PPT), prune (threshold 0), pool (threshold infinity)")


def main(argv=None):
    args = opts = parse_cli(argv, tool="sweep", description=__doc__, add_tool_options=tool_options)
    thresholds = opts.thresholds
    if thresholds is None and args.eval_threshold is not None:
        thresholds = [args.eval_threshold]
    if thresholds is None and "adaptive" in opts.policy:
        raise ConfigError("the adaptive policy needs --thresholds (or eval_threshold in the config)")
    pp_loc_lists = opts.pp_loc_lists or ([args.pp_loc_list] if args.pp_loc_list is not None else None)
    settings = expand_settings(opts.r, thresholds, pp_loc_lists, list(dict.fromkeys(opts.policy)))
    logger = get_logger(None, 0)
    sigterm_as_keyboard_interrupt()
    try:
        rows, notes = run_sweep(args, settings, opts.out, logger)
    except KeyboardInterrupt:
        print(f"interrupted: finished rows are kept in {os.path.join(opts.out, 'sweep.csv')}; run the same command "
              "to continue", file=sys.stderr)
        raise
    record = write_reports(opts.out, rows, title=f"{args.model} at {args.image_resize}px: top-1 against GMACs on "
                                                f"{args.data_dir}/{args.val_split}", notes=notes)
    print(record["text"])
    print(f"table, CSV, JSON and plot written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
