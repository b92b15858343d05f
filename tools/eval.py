"""Evaluate a checkpoint: ``python tools/eval.py -c CONFIG --ckpt_path CKPT [--metrics_out FILE.json]``.

Prints top-1, top-5, loss, GMACs (analytic, from the model's token schedule), parameters and img/s;
``--metrics_out`` writes {"top1","top5","loss","gmacs","params_m","img_per_s","num_samples"} (top-1/5 in
percent). ``--ckpt_path`` takes a checkpoint of tools/train.py (its EMA weights when ``--ema true``) or
converted weights. Runs on one device (as mindcv's validate.py).
"""
import json
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.engine.evaluate import METRIC_KEYS, format_metrics_table, run_eval  # noqa: E402
from mindppt.io import atomic_write  # noqa: E402
from mindppt.logger import get_logger  # noqa: E402


def main(argv=None):
    args = parse_cli(argv, tool="eval", description=__doc__)
    logger = get_logger(None, 0)
    metrics, _ = run_eval(args, logger)
    print(format_metrics_table([(args.model, metrics)]))
    if args.metrics_out:
        atomic_write(args.metrics_out, json.dumps({k: metrics[k] for k in METRIC_KEYS}, indent=2) + "\n")
        print(f"metrics written to {args.metrics_out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
