"""Convert DeiT/timm weights (.pth, .safetensors, .npz, .ckpt) to a MindSpore .ckpt for mindppt.

  python tools/convert_weights.py --src deit_small_patch16_224-cd65a155.pth --dst deit_small.ckpt
  python tools/convert_weights.py --src model.safetensors --dst out.ckpt --model deit_tiny_patch16_224

The weights are checked against ``create_model(MODEL, num_classes=N)`` (every missing, unexpected or
wrongly-shaped tensor is reported) and the model's parameters are written, so the result loads with
``create_model(MODEL, checkpoint_path=OUT)`` (also into the ppt_* variant of the same size). Without
--model, DeiT tiny/small/base is inferred from the embedding width and depth. Without --num_classes,
the checkpoint's head size is used; a different --num_classes drops the head with a warning.
"""
import argparse
import os
import sys
import warnings

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.errors import CheckpointError  # noqa: E402
from mindppt.formats import read_state_dict  # noqa: E402
from mindppt.io import save_checkpoint_atomic  # noqa: E402
from mindppt.models import create_model, is_model  # noqa: E402
from mindppt.models.weights import load_state_dict_into_model  # noqa: E402

_DEIT_BY_DIM = {192: "deit_tiny_patch16_224", 384: "deit_small_patch16_224", 768: "deit_base_patch16_224"}


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def infer_model_name(state):
    """Name of the DeiT variant matching the checkpoint's embed dim and depth, and why."""
    if "patch_embed.proj.weight" in state:
        dim = int(state["patch_embed.proj.weight"].shape[0])
    elif "cls_token" in state:
        dim = int(state["cls_token"].shape[-1])
    else:
        raise UserError("cannot infer the model (no patch_embed.proj.weight or cls_token); pass --model")
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.count(".") >= 2})
    name = _DEIT_BY_DIM.get(dim)
    if name is None or depth != 12:
        raise UserError(f"cannot infer the model from embed dim {dim} and depth {depth} "
                        f"(known: DeiT tiny/small/base, dims 192/384/768, depth 12); pass --model")
    return name, f"embed dim {dim}, depth {depth}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--src", required=True, help="input checkpoint (.pth/.pt/.bin, .safetensors, .npz, .ckpt)")
    p.add_argument("--dst", required=True, help="output MindSpore checkpoint (.ckpt)")
    p.add_argument("--model", default=None, help="registered model name to validate against "
                                                 "(default: infer deit tiny/small/base)")
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
        result = load_state_dict_into_model(net, state, source=args.src, model_name=model_name)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    save_checkpoint_atomic(net, args.dst)
    n_params = sum(int(p.size) for p in net.get_parameters())
    print(f"read {len(state)} tensors from {args.src}; loaded {len(result['loaded'])} of "
          f"{len(result['loaded']) + len(result['not_loaded'])} parameters "
          f"({n_params / 1e6:.2f} M values) into {model_name} (num_classes={num_classes})")
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
