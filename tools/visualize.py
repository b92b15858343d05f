"""Draw which patches PPT pruned or pooled, block by block, for a few images.

  python tools/visualize.py --model ppt_deit_small_patch16_224 --ckpt_path deit_s.ckpt \
      --images a.jpg b.jpg --out outputs/tokens.png
Without --images it uses scikit-learn's two sample photos. The images are preprocessed as the model's
evaluation does (its default cfg: size, interpolation, crop_pct, mean, std). See mindppt/engine/visualize.py.
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

import numpy as np  # noqa: E402

from mindppt.config import add_options, tool_parser  # noqa: E402
from mindppt.engine.cli import run_tool  # noqa: E402
from mindppt.engine.visualize import draw_token_maps  # noqa: E402
from mindppt.option_types import int_type  # noqa: E402


def parse_args(argv=None):
    p = tool_parser("tools/visualize.py", __doc__)
    own = p.add_argument_group("visualize")
    own.add_argument("--images", nargs="*", default=[], help="image files or folders")
    own.add_argument("--zoom", type=int_type(lo=1), default=2, help="magnification of the drawn images")
    own.add_argument("--out", default="outputs/tokens.png", help="the figure (PNG)")
    add_options(p.add_argument_group("model"), ("model", "num_classes", "ckpt_path", "eval_threshold"))
    add_options(p.add_argument_group("device"), ("device_target",))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = draw_token_maps(args.model, args.out, images=args.images, ckpt_path=args.ckpt_path or "",
                             num_classes=args.num_classes, threshold=args.eval_threshold, scale=args.zoom,
                             device_target=args.device_target)
    print(f"wrote {result['out']}")
    for block in result["blocks"]:
        print(f"block {block['block']}: tokens {block['tokens']}, policies {block['policies']}, "
              f"variance {np.array2string(block['variance'], precision=2)}")


if __name__ == "__main__":
    sys.exit(run_tool(main))
