"""Throughput and memory benchmark in GRAPH_MODE: img/s, latency, compile time, peak memory, GMACs.

Models are measured alternately so machine drift hits them equally; compilation and warm-up are excluded
and the median of the repeats is reported (mindppt.engine.benchmark). ``--isolate`` measures each model in
its own process (alternating process by process), so the peak memory reported is that model's own.
``--official_repo PPT --official_python VENV/bin/python`` also times the official PyTorch PPT code on each
model in the same alternation (docs/performance.md). ``--train`` also times the trainer's training step.

  python tools/benchmark.py --models deit_small_patch16_224 ppt_deit_small_patch16_224 \\
      --batch_size 1 8 32 [--train] [--isolate] [--exported] [--amp_level O2] [--json OUT.json]
  python tools/benchmark.py --models all --batch_size 32 --isolate --markdown zoo.md --json zoo.json
"""
import argparse
import json
import os
import shlex
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.config import str2bool  # noqa: E402
from mindppt.device import DeviceUnavailableError, setup_device  # noqa: E402
from mindppt.engine.benchmark import run_benchmark  # noqa: E402
from mindppt.io import atomic_write  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["deit_small_patch16_224", "ppt_deit_small_patch16_224"],
                   help="registered names (measured alternately together), or 'all' / shell-style patterns "
                        "('deit_*'): dense/PPT pairs, measured pair by pair")
    p.add_argument("--batch_size", nargs="+", type=int, default=[32])
    p.add_argument("--image_size", type=int, default=None, help="input resolution (default: each model's own)")
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds over the models")
    p.add_argument("--iters", type=int, default=2, help="timed calls per model per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--isolate", action="store_true",
                   help="each measurement in its own process: the peak memory is that model's own")
    p.add_argument("--official_repo", default="",
                   help="checkout of the official PyTorch PPT repository: time it too (implies --isolate)")
    p.add_argument("--official_python", default="",
                   help="Python with torch, torchvision and timm==0.4.12 that runs the official code")
    p.add_argument("--train", action="store_true",
                   help="also time the trainer's training step (fwd+bwd, loss scaling, clipping, AdamW, EMA)")
    p.add_argument("--exported", action="store_true",
                   help="also time each model exported as MINDIR (tools/export.py) beside its Cell")
    p.add_argument("--amp_level", default="O0", choices=("O0", "O1", "O2", "O3"),
                   help="mixed precision (mindppt.models.amp.apply_amp) for inference and training; "
                        "the recipes use O2 on Ascend/GPU")
    p.add_argument("--loss_scale_type", default="dynamic", choices=("none", "fixed", "dynamic"),
                   help="--train: loss scaling of the training step")
    p.add_argument("--clip_grad", type=float, default=1.0, help="--train: global-norm clipping (0 = off)")
    p.add_argument("--ema", type=str2bool, default=True, help="--train: EMA of the weights (true/false)")
    p.add_argument("--drop_path_rate", type=float, default=0.1, help="--train: stochastic depth rate")
    p.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend", "auto"))
    p.add_argument("--jit_level", default="", help="O0/O1/O2; empty keeps MindSpore's default")
    p.add_argument("--json", default="", help="write the results as a JSON list")
    p.add_argument("--markdown", default="", help="write the closing table (markdown, with command and machine)")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    if bool(args.official_repo) != bool(args.official_python):
        print("error: --official_repo and --official_python go together (the official code runs under a "
              "Python with torch and timm==0.4.12)", file=sys.stderr)
        return 2
    if args.official_repo and not os.path.isfile(os.path.join(args.official_repo, "ppt_deit.py")):
        print(f"error: --official_repo {args.official_repo}: no ppt_deit.py there (expected a checkout of the "
              "official PPT repository)", file=sys.stderr)
        return 2
    try:
        setup_device(args.device_target, mode="graph", jit_level=args.jit_level or None)
        results, report = run_benchmark(args, "python tools/benchmark.py " + shlex.join(argv),
                                        out=lambda line: print(line, flush=True))
    except (ValueError, DeviceUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(report, end="")
    if args.json:
        atomic_write(args.json, json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        atomic_write(args.markdown, report)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
