"""Draw which patches PPT pruned or pooled, block by block, for a few images.

  python tools/visualize.py --model ppt_deit_small_patch16_224 --ckpt_path deit_s.ckpt \
      --images a.jpg b.jpg --out outputs/tokens.png
Without --images it uses scikit-learn's two sample photos. The images are preprocessed as the model's
evaluation does (its default cfg: size, interpolation, crop_pct, mean, std). See mindppt/engine/visualize.py.
"""
import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

import numpy as np  # noqa: E402

from mindppt.engine.cli import run_tool  # noqa: E402
from mindppt.engine.visualize import draw_token_maps  # noqa: E402
from mindppt.option_types import float_or_list  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ppt_deit_small_patch16_224")
    p.add_argument("--ckpt_path", default="", help="weights (.ckpt, or any format convert_weights reads)")
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--threshold", type=float_or_list(lo=0.0), default=None,
                   help="prune/pool threshold, or one per compression block (a comma list); model default if unset")
    p.add_argument("--images", nargs="*", default=[], help="image files or folders")
    p.add_argument("--scale", type=int, default=2, help="magnification of the drawn images")
    p.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend", "auto"))
    p.add_argument("--out", default="outputs/tokens.png")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = draw_token_maps(args.model, args.out, images=args.images, ckpt_path=args.ckpt_path,
                             num_classes=args.num_classes, threshold=args.threshold, scale=args.scale,
                             device_target=args.device_target)
    print(f"wrote {result['out']}")
    for block in result["blocks"]:
        print(f"block {block['block']}: tokens {block['tokens']}, policies {block['policies']}, "
              f"variance {np.array2string(block['variance'], precision=2)}")


if __name__ == "__main__":
    sys.exit(run_tool(main))
