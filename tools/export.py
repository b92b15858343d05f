r"""Export a model as a deployable static-shape graph with its side file.

  python tools/export.py --model NAME [-c CONFIG] [--ckpt_path CKPT] --batch_size B [--image_resize S] \
      [--file_format MINDIR] [--class_index FILE] --out PREFIX

Writes PREFIX.mindir (or .air / .onnx) and PREFIX.json: model, input shape (B, 3, S, S) float32, the
preprocessing (image_size, crop_pct, interpolation, mean, std), PPT's r and thresholds per compression block
(eval_threshold, baked into the graph) and the class names (--class_index, else the class folders of
data_dir/train_split, else ImageNet's for 1000 classes). The graph holds every image's policy choice, so a
batch may mix pooled and pruned images. It uses MindSpore's portable ops, not the fused CPU GELU kernel
(a local .so). Load it with mindspore.load + nn.GraphCell, or tools/predict.py --mindir PREFIX.
A format this MindSpore cannot export (AIR needs Ascend; ONNX lacks ops PPT uses) is an error naming the op.
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.build import describe_threshold  # noqa: E402
from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.engine.export import EXPORT_FORMATS, export_model  # noqa: E402


def tool_options(p):
    p.add_argument("--out", required=True, metavar="PREFIX", help="output path without suffix")
    p.add_argument("--file_format", default="MINDIR", type=str.upper, choices=list(EXPORT_FORMATS))
    p.add_argument("--class_index", default=None, metavar="FILE",
                   help="class names: one per line, or JSON (list or index -> name)")


def main(argv=None):
    args = opts = parse_cli(argv, tool="export", description=__doc__, add_tool_options=tool_options)
    info = export_model(args, opts.out, opts.file_format, args.batch_size, opts.class_index)
    ppt = info["ppt"]
    thresholds = ppt["thresholds"][0] if len(set(ppt["thresholds"])) == 1 else ppt["thresholds"]
    policy = (f"r {ppt['r_tokens']} at blocks {ppt['compression_blocks']}, threshold "
              f"{describe_threshold(thresholds)}" if ppt["compression_blocks"] else "dense")
    path = opts.out + EXPORT_FORMATS[info["file_format"]]
    print(f"exported {info['model']} ({policy}) as {info['file_format']}: {path} "
          f"({info['bytes'] / 2**20:.1f} MB), input {tuple(info['input_shape'])} float32; "
          f"side file {opts.out}.json ({len(info['class_names'])} classes from {info['class_names_source']})")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
