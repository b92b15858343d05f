"""Draw which patches PPT pruned or pooled, block by block, for a few images.

  python tools/visualize.py --model ppt_deit_small_patch16_224 --ckpt_path deit_s.ckpt \
      --images a.jpg b.jpg --out outputs/tokens.png
Without --images it uses scikit-learn's two sample photos.
"""
import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from mindppt.device import setup_device  # noqa: E402
from mindppt.errors import CheckpointError, DeviceUnavailableError  # noqa: E402
from mindppt.models import create_model, inspect_compression  # noqa: E402
from mindppt.option_types import float_or_list  # noqa: E402
from mindppt.visualize import compression_figure  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ToolError(Exception):
    """Bad input: printed as one ``error:`` line, exit status 2."""


def load_images(paths, size):
    """RGB uint8 (B, size, size, 3): resize the short side, centre crop."""
    if paths:
        pictures = []
        for path in paths:
            try:
                pictures.append(Image.open(path).convert("RGB"))
            except (OSError, ValueError) as err:
                raise ToolError(f"cannot read image {path}: {err}") from None
        names = [os.path.basename(p) for p in paths]
    else:
        pictures = [Image.fromarray(a) for a in load_sample_images().images]
        names = ["china.jpg", "flower.jpg"]
    out = []
    for picture in pictures:
        scale = size / min(picture.size)
        picture = picture.resize((max(size, round(picture.width * scale)), max(size, round(picture.height * scale))),
                                 Image.BICUBIC)
        left, top = (picture.width - size) // 2, (picture.height - size) // 2
        out.append(np.asarray(picture.crop((left, top, left + size, top + size))))
    return np.stack(out), names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ppt_deit_small_patch16_224")
    p.add_argument("--ckpt_path", default="", help="weights (.ckpt, or any format convert_weights reads)")
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--threshold", type=float_or_list(lo=0.0), default=None,
                   help="prune/pool threshold, or one per compression block (a comma list); model default if unset")
    p.add_argument("--images", nargs="*", default=[])
    p.add_argument("--scale", type=int, default=2, help="magnification of the drawn images")
    p.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend", "auto"))
    p.add_argument("--out", default="outputs/tokens.png")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        setup_device(args.device_target, mode="graph")
    except DeviceUnavailableError as err:
        raise ToolError(f"{err}") from None
    kwargs = {"trace_source": True}
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold
    try:
        model = create_model(args.model, num_classes=args.num_classes, checkpoint_path=args.ckpt_path, **kwargs)
    except (CheckpointError, ValueError) as err:
        raise ToolError(f"{err}") from None
    size = model.patch_embed.img_size
    images, names = load_images(args.images, size)
    if model.patch_embed.in_channels == 1:
        images = images[..., :1]
    x = (images / 255.0 - np.array(MEAN)) / np.array(STD)
    _, infos = inspect_compression(model, x.transpose(0, 3, 1, 2).astype(np.float32))
    if not infos:
        raise ToolError(f"model {args.model} compresses no tokens (r_tokens=0?): nothing to draw")
    sheet = compression_figure(images, infos, model.patch_embed.grid, scale=args.scale, titles=names)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")
    for info in infos:
        policies = ["pool" if p else "prune" for p in info["pooled"]]
        print(f"block {info['block']}: tokens {info['size'].shape[1]}, policies {policies}, "
              f"variance {np.array2string(info['variance'], precision=2)}")


if __name__ == "__main__":
    try:
        main()
    except ToolError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
