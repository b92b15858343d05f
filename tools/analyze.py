r"""What PPT decides on your data, and the threshold for the share of pooled images you want.

  python tools/analyze.py -c CONFIG --ckpt_path CKPT [--data_dir DIR] [--split val] [--max_images N] \
      [--target_pool_ratio P [P ...]] --out DIR

Runs the model of CONFIG (at its eval_threshold) over DIR/split and writes into --out, per compression
block, the variance of every image's significance scores and its policy (variance.png: scatter and
histogram with the threshold, as the paper's Figure 3; variance_images.csv, variance_blocks.csv,
variance.json). --target_pool_ratio (one share for every block, or one per block) also finds the thresholds
that pool that share of the images, prints them with a YAML line to paste into a config, and writes the
same files as calibrated.* plus calibrated_threshold.yaml. Every other --key value is a config option
(as for tools/eval.py).
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.analysis import run_analysis  # noqa: E402
from mindppt.engine.build import describe_threshold  # noqa: E402
from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.logger import get_logger  # noqa: E402
from mindppt.option_types import float_type, int_type  # noqa: E402


def tool_options(p):
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--split", default=None, help="split folder under data_dir (default: the config's val_split)")
    p.add_argument("--max_images", type=int_type(lo=1), default=None, help="analyse only the first N images")
    p.add_argument("--target_pool_ratio", type=float_type(0.0, 1.0), nargs="+", default=None, metavar="P",
                   help="share of images to pool: one for every compression block, or one per block")


def print_blocks(title, stats):
    print(title)
    print(f"  {'block':>5} {'threshold':>10} {'pooled':>7} {'pruned':>7} {'pooled %':>8} {'mean var':>10} "
          f"{'median':>10} {'min':>10} {'max':>10}")
    for s in stats:
        print(f"  {s['block']:>5} {s['threshold']:>10.3g} {s['pooled']:>7} {s['pruned']:>7} "
              f"{100 * s['pooled_share']:>8.1f} {s['mean']:>10.3e} {s['q50']:>10.3e} {s['min']:>10.3e} "
              f"{s['max']:>10.3e}")


def main(argv=None):
    args = opts = parse_cli(argv, tool="analyze", description=__doc__, add_tool_options=tool_options)
    if opts.split is not None:
        args.val_split = opts.split
    logger = get_logger(None, 0)
    summary = run_analysis(args, opts.out, max_images=opts.max_images, target_shares=opts.target_pool_ratio,
                           logger=logger)
    configured = summary["configured"]
    print_blocks(f"{summary['images']} images at threshold {describe_threshold(configured['thresholds'])}:",
                 configured["blocks"])
    if "calibrated" in summary:
        calibrated = summary["calibrated"]
        print_blocks(f"calibrated thresholds {describe_threshold(calibrated['thresholds'])}:", calibrated["blocks"])
        print("paste into a config:\n" + calibrated["yaml"].rstrip())
    print(f"figures, CSV and JSON written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
