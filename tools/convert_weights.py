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
the model they look like.
"""
import argparse
import os
import sys
import warnings

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.errors import CheckpointError  # noqa: E402
from mindppt.formats import read_state_dict  # noqa: E402
from mindppt.io import save_checkpoint_atomic  # noqa: E402
from mindppt.models import count_params, create_model, is_model  # noqa: E402
from mindppt.models.deit import DEIT_SIZES  # noqa: E402
from mindppt.models.weights import load_state_dict_into_model  # noqa: E402

_DEIT_SIZES = {arch["embed_dim"]: size for size, arch in DEIT_SIZES.items()}
# LV-ViT's convolutional stem: the official names (conv1, bn1, ...), or a Sequential stem's (conv.0, ...)
_LVVIT_STEM_KEYS = ("patch_embed.conv1.weight", "patch_embed.conv.0.weight")


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def _embed_dim(state):
    if "cls_token" in state:
        return int(state["cls_token"].shape[-1])
    if "patch_embed.proj.weight" in state:
        return int(state["patch_embed.proj.weight"].shape[0])
    raise UserError("cannot infer the model (no cls_token or patch_embed.proj.weight); pass --model")


def infer_model_name(state):
    """Name of the registered model the checkpoint's tensors fit, and why (see the module doc)."""
    dim = _embed_dim(state)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.count(".") >= 2})
    pos_embed = state.get("pos_embed")
    positions = int(pos_embed.shape[1]) if pos_embed is not None and pos_embed.ndim == 3 else None
    distilled = "dist_token" in state
    if "aux_head.weight" in state and any(k in state for k in _LVVIT_STEM_KEYS):
        if dim == 384 and depth == 16:
            return "lvvit_s", "LV-ViT stem and aux_head, embed dim 384, depth 16"
        raise UserError(f"cannot infer the model from an LV-ViT checkpoint of embed dim {dim} and depth {depth} "
                        f"(known: lvvit_s, embed dim 384, depth 16); pass --model")
    size = _DEIT_SIZES.get(dim)
    if size is not None and depth == 12:
        why = f"embed dim {dim}, depth {depth}"
        if distilled and positions in (None, 198):
            return f"deit_{size}_distilled_patch16_224", f"a distillation token, {why}"
        if not distilled and positions in (None, 197):
            return f"deit_{size}_patch16_224", why
        if not distilled and positions == 577 and size == "base":
            return "deit_base_patch16_384", f"{why}, 577 position embeddings (384 px)"
    found = f"embed dim {dim}, depth {depth}, {positions} position embeddings" + \
        (", a distillation token" if distilled else "")
    raise UserError(f"cannot infer the model from {found} (known: DeiT tiny/small/base, embed dims 192/384/768, "
                    f"depth 12, 197 positions at 224 px, 198 with a distillation token, 577 for DeiT-B at 384 px; "
                    f"LV-ViT-S); pass --model")


def _looks_like(state, model_name):
    """'; the checkpoint looks like X (why): pass --model X' when another model fits, else ''."""
    try:
        name, why = infer_model_name(state)
    except UserError:
        return ""
    if model_name.startswith("ppt_") and is_model(f"ppt_{name}"):
        name = f"ppt_{name}"
    if name == model_name:
        return ""
    return f"; the checkpoint looks like {name} ({why}): pass --model {name}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--src", required=True, help="input checkpoint (.pth/.pt/.bin, .safetensors, .npz, .ckpt)")
    p.add_argument("--dst", required=True, help="output MindSpore checkpoint (.ckpt)")
    p.add_argument("--model", default=None, help="registered model name to validate against "
                                                 "(default: inferred, see below)")
    p.add_argument("--num_classes", type=int, default=None,
                   help="classes of the model (default: the checkpoint's head size, else 1000)")
    return p.parse_args(argv)


def convert(args):
    if not os.path.isfile(args.src):
        raise UserError(f"input checkpoint {args.src} does not exist")
    state = read_state_dict(args.src)

    if args.model:
        if not is_model(args.model):
            raise UserError(f"unknown model {args.model!r}")
        model_name = args.model
        print(f"model: {model_name} (from --model)")
    else:
        model_name, why = infer_model_name(state)
        print(f"model: {model_name} (inferred from {why}; pass --model to choose another)")
        augreg = model_name.replace("deit_", "vit_", 1)  # the AugReg ViT of the same shapes, if registered
        if augreg != model_name and is_model(augreg):
            print(f"note: ViT AugReg weights have DeiT's shapes; if these are AugReg weights, pass --model {augreg}")
    num_classes = args.num_classes
    if num_classes is None:
        head = state.get("head.weight")
        num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 1000
    try:
        net = create_model(model_name, num_classes=num_classes)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {model_name} with num_classes={num_classes}: {e}") from e
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = load_state_dict_into_model(net, state, source=args.src, model_name=model_name)
        except CheckpointError as e:
            if not args.model:
                raise
            raise UserError(f"{e}{_looks_like(state, model_name)}") from None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    save_checkpoint_atomic(net, args.dst)
    n_params = count_params(net)
    print(f"read {len(state)} tensors from {args.src}; loaded {len(result['loaded'])} of "
          f"{len(result['loaded']) + len(result['not_loaded'])} parameters "
          f"({n_params / 1e6:.2f} M parameters) into {model_name} (num_classes={num_classes})")
    if result["not_loaded"]:
        print(f"kept the model's own initialisation for: {', '.join(result['not_loaded'])}")
    print(f"wrote {args.dst}")


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args)
    except (CheckpointError, UserError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. disk full while writing --dst
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
