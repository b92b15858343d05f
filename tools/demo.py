"""``make demo``: dense ViT vs the same ViT with PPT on real handwritten digits, one recipe, GRAPH_MODE.

1. writes scikit-learn's digits (1797 real 8x8 scans, fixed stratified split) as an ImageFolder in
   outputs/demo/digits;
2. trains ``vit_digits_patch4_16`` (dense: the recipe with ``--model vit_digits_patch4_16 --r_tokens 0``)
   and ``ppt_vit_digits_patch4_16`` with configs/demo_digits.yaml;
3. evaluates both final checkpoints (top-1/top-5/loss on the 450 validation digits, GMACs from the token
   schedule), measures forward img/s of the two models alternately in this process (so machine load hits
   both alike), and counts how often PPT pooled vs pruned in each compression block;
4. prints the comparison and writes outputs/demo/summary.json as {"dense": {...}, "ppt": {...}}.

Extra ``--key value`` arguments go to both trainings (e.g. ``--epoch_size 3`` for a quick look); the
options the demo sets itself (model, r_tokens, ckpt_save_dir, weights) are refused. The logic is
:func:`mindppt.engine.demo.run_demo`.
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.engine.demo import format_report, run_demo  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo_digits.yaml")
OUT = os.path.join(ROOT, "outputs", "demo")


def main(argv=None):
    extra = list(sys.argv[1:] if argv is None else argv)
    args = parse_cli(["-c", CONFIG] + extra, tool="demo", description=__doc__)
    args.data_dir = os.path.join(ROOT, args.data_dir)  # the recipe's paths are relative to the repository
    summary = run_demo(args, OUT, progress=lambda line: print(line, flush=True))
    print("\n" + format_report(summary))
    print(f"summary written to {os.path.relpath(os.path.join(OUT, 'summary.json'), ROOT)}; demo took "
          f"{summary['comparison']['demo_time_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
