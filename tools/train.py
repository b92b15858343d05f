"""Train a model from a YAML recipe: ``python tools/train.py -c configs/ppt_deit_s.yaml [--key value ...]``.

Data parallel: ``msrun --worker_num=N --local_worker_num=N tools/train.py -c ... --distribute true``.
Resume: ``--ckpt_path CKPT_SAVE_DIR/last.ckpt --resume_opt true`` (mindcv's options).
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.engine.trainer import train  # noqa: E402


def main(argv=None):
    train(parse_cli(argv, tool="train", description=__doc__))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
