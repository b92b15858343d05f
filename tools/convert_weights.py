"""Convert DeiT/timm/LV-ViT weights (.pth, .safetensors, .npz, .ckpt) to a MindSpore .ckpt for mindppt.

  python tools/convert_weights.py --src deit_small_patch16_224-cd65a155.pth --dst deit_small.ckpt
  python tools/convert_weights.py --src deit_small_distilled_patch16_224-649709d9.pth --dst deit_s_dist.ckpt
  python tools/convert_weights.py --src model.safetensors --dst out.ckpt --model vit_small_patch16_224

The weights are checked against ``create_model(MODEL, num_classes=N)`` (every missing, unexpected or
wrongly-shaped tensor is reported) and the model's parameters are written, so the result loads with
``create_model(MODEL, checkpoint_path=OUT)`` (also into the ppt_* variant of the same model). Without
--model, the model is inferred from the tensors: DeiT tiny/small/base from the embedding width (192/384/768)
and depth 12, distilled DeiT (deit_*_distilled_patch16_224) from a distillation token, DeiT-B at 384 px
(deit_base_patch16_384) from 577 position embeddings, and LV-ViT-S (lvvit_s) from its convolutional stem and
aux_head (width 384, depth 16). ViT AugReg weights have DeiT's shapes and are inferred as DeiT: pass --model
vit_{tiny,small,base}_patch16_224 for them. Without --num_classes, the checkpoint's head size is used; a
different --num_classes drops the head with a warning. When the weights do not fit --model, the error names
the model they look like. See mindppt/engine/convert.py.
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.config import add_options, tool_parser  # noqa: E402
from mindppt.engine.cli import run_tool  # noqa: E402
from mindppt.engine.convert import convert_weights  # noqa: E402


def parse_args(argv=None):
    p = tool_parser("tools/convert_weights.py", __doc__)
    own = p.add_argument_group("convert_weights")
    own.add_argument("--src", required=True, help="input checkpoint (.pth/.pt/.bin, .safetensors, .npz, .ckpt)")
    own.add_argument("--dst", required=True, help="output MindSpore checkpoint (.ckpt)")
    # the shared model options; unset: inferred from the weights (the model, the head size)
    add_options(p.add_argument_group("model (default: inferred from the weights)"), ("model", "num_classes"),
                defaults={"model": None, "num_classes": None})
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    summary = convert_weights(args.src, args.dst, model=args.model, num_classes=args.num_classes)
    name = summary["model"]
    if summary["inferred_from"] is None:
        print(f"model: {name} (from --model)")
    else:
        print(f"model: {name} (inferred from {summary['inferred_from']}; pass --model to choose another)")
    for twin in summary["same_shapes"]:
        print(f"note: ViT AugReg weights have DeiT's shapes; if these are AugReg weights, pass --model {twin}")
    loaded, not_loaded = summary["loaded"], summary["not_loaded"]
    print(f"read {summary['tensors']} tensors from {summary['src']}; loaded {len(loaded)} of "
          f"{len(loaded) + len(not_loaded)} parameters ({summary['parameters'] / 1e6:.2f} M values) into {name} "
          f"(num_classes={summary['num_classes']})")
    if not_loaded:
        print(f"kept the model's own initialisation for: {', '.join(not_loaded)}")
    print(f"wrote {summary['dst']}")


if __name__ == "__main__":
    sys.exit(run_tool(main))
