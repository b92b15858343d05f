r"""Top-5 classes of image files, from a checkpoint or an exported graph.

  python tools/predict.py -c CONFIG --ckpt_path CKPT --images PATH [PATH ...] [--json [FILE]] \
      [--show_tokens OUT.png] [--class_index FILE]
  python tools/predict.py --mindir PREFIX --images PATH [PATH ...] [--json [FILE]]

PATH: image files or folders (searched recursively). Preprocessing is the evaluation transform of the config
(resize to image_resize / crop_pct, centre crop, normalise; by default the model's own), or the one
recorded in PREFIX.json by tools/export.py. Class names: --class_index (one name per line, or JSON), else
the class folders of the
config's data_dir/train_split, else ImageNet's for 1000 classes, else the label numbers (an exported graph
carries its own). --json prints the predictions as JSON (or writes them to FILE). --show_tokens draws what PPT
pruned and pooled in every compression block (checkpoint only). Unreadable images are reported and skipped.
With --mindir the side file fixes model, weights and preprocessing: only the device options apply.
"""
import json
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.engine.predict import Predictor, predict_files  # noqa: E402
from mindppt.errors import ConfigError  # noqa: E402
from mindppt.io import atomic_write  # noqa: E402
from mindppt.option_types import int_type  # noqa: E402

RUNTIME_OPTIONS = ("device_target", "device_id", "mode", "jit_level")  # what an exported graph still reads


def tool_options(p):
    p.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders")
    p.add_argument("--mindir", default=None, metavar="PREFIX", help="exported graph of tools/export.py")
    p.add_argument("--class_index", default=None, metavar="FILE", help="class names (one per line, or JSON)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="print the predictions as JSON (or write them to FILE)")
    p.add_argument("--show_tokens", default=None, metavar="OUT.png", help="draw PPT's token maps")
    p.add_argument("--top_k", type=int_type(lo=1), default=5, help="classes per image")


def main(argv=None):
    args = opts = parse_cli(argv, tool="predict", description=__doc__, add_tool_options=tool_options)
    if opts.mindir:
        unused = [f"--{k}" for k in args.command_line_options if k not in RUNTIME_OPTIONS]
        unused += ["--show_tokens"] if opts.show_tokens else []
        if unused:
            raise ConfigError(f"--mindir runs the exported graph as {opts.mindir}.json describes; {', '.join(unused)} "
                           f"would do nothing (export again to change the model, or predict with --ckpt_path)")
        predictor = Predictor.from_export(opts.mindir, opts.class_index)
    else:
        predictor = Predictor.from_config(args, opts.class_index, trace_source=bool(opts.show_tokens))
    results = predict_files(predictor, opts.images, k=opts.top_k, show_tokens=opts.show_tokens)
    if opts.json == "-":
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(r["image"])
            for rank, c in enumerate(r["top"], 1):
                print(f"  {rank}. {c['prob']:.4f}  {c['name']} ({c['index']})")
    if opts.json not in (None, "-"):
        atomic_write(opts.json, json.dumps(results, indent=2) + "\n")
        print(f"predictions written to {opts.json}")
    if opts.show_tokens:
        print(f"token maps written to {opts.show_tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
