"""Throughput benchmark in GRAPH_MODE: img/s, latency, compile time, peak memory, GMACs.

Models are measured alternately in one process so machine drift hits them equally; compilation and
warm-up are excluded and the median of the repeats is reported. ``--train`` also times the trainer's own
training step (mindppt.engine.trainer.build_train_step: TrainStep with the recipe's AdamW, drop path,
soft-target cross entropy on smoothed one-hot targets, and by default dynamic loss scaling, gradient
clipping and EMA, as tools/op_support.py compiles it).

``--exported`` also times each model exported by tools/export.py (MINDIR, portable ops, loaded with
mindspore.load + nn.GraphCell) beside its Cell.

  python tools/benchmark.py --models deit_small_patch16_224 ppt_deit_small_patch16_224 \
      --batch_size 1 8 32 [--train] [--exported] [--amp_level O2] [--json OUT.json]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import nn  # noqa: E402

from mindppt.config import parse_args as parse_config  # noqa: E402
from mindppt.config import str2bool  # noqa: E402
from mindppt.data import smooth_one_hot  # noqa: E402
from mindppt.device import DeviceUnavailableError, setup_device  # noqa: E402
from mindppt.engine.build import build_model  # noqa: E402
from mindppt.engine.export import EXPORT_FORMATS, export_model  # noqa: E402
from mindppt.engine.schedule import create_lr_schedule, resolve_lr  # noqa: E402
from mindppt.engine.trainer import build_train_step  # noqa: E402
from mindppt.models import create_model  # noqa: E402
from mindppt.models.amp import apply_amp  # noqa: E402
from mindppt.models.flops import model_gmacs  # noqa: E402


def rss_mb():
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Samples the process's resident memory while a block runs (Linux /proc)."""

    def __init__(self, interval=0.005):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def train_config(name, batch_size, image_size, num_classes, options):
    """The configuration of a training run of ``name`` (the recipe defaults) with ``options`` on top."""
    return parse_config(["--model", name, "--batch_size", str(batch_size), "--image_size", str(image_size),
                         "--num_classes", str(num_classes), *options])


class Runner:
    """One model at one batch size, inference or the trainer's full training step."""

    def __init__(self, name, batch_size, train, image_size, num_classes, amp_level="O0", train_options=(),
                 exported=False):
        self.name, self.batch_size, self.train = name + (" [MINDIR]" if exported else ""), batch_size, train
        rng = np.random.default_rng(0)
        self.images = ms.Tensor(rng.standard_normal((batch_size, 3, image_size, image_size), np.float32))
        if train:
            args = train_config(name, batch_size, image_size, num_classes, ("--amp_level", amp_level, *train_options))
            self.model = build_model(args)
            lr_values = create_lr_schedule(base_lr=resolve_lr(args), min_lr=args.min_lr, warmup_lr=args.warmup_lr,
                                           warmup_epochs=args.warmup_epochs, epochs=args.epoch_size,
                                           steps_per_epoch=1, scheduler=args.scheduler)
            self.step = build_train_step(apply_amp(self.model, args.amp_level), args, lr_values)
            self.step.set_train(True)
            labels = rng.integers(0, num_classes, batch_size)
            self.labels = ms.Tensor(smooth_one_hot(labels, num_classes, args.label_smoothing))
        else:
            self.model = create_model(name, num_classes=num_classes, img_size=image_size)
            self.net = apply_amp(self.model, amp_level)
            if exported:  # the graph tools/export.py writes, in place of the Cell
                args = train_config(name, batch_size, image_size, num_classes, ("--amp_level", amp_level))
                with tempfile.TemporaryDirectory() as tmp:
                    export_model(args, os.path.join(tmp, "model"), "MINDIR", batch_size)
                    self.net = nn.GraphCell(ms.load(os.path.join(tmp, "model" + EXPORT_FORMATS["MINDIR"])))
            self.net.set_train(False)
        self.gmacs = model_gmacs(self.model)
        self.compile_s = None
        self.times = []
        self.peak_mb = 0.0

    def run_once(self):
        start = time.perf_counter()
        out = self.step(self.images, self.labels) if self.train else self.net(self.images)
        out.asnumpy()  # wait for the device
        return time.perf_counter() - start

    def compile(self, warmup):
        self.compile_s = self.run_once()  # first call = graph compilation + one run
        for _ in range(warmup):
            self.run_once()

    def measure(self, iters):
        with PeakMemory() as mem:
            for _ in range(iters):
                self.times.append(self.run_once())
        self.peak_mb = max(self.peak_mb, mem.peak)

    def result(self):
        latency = statistics.median(self.times)
        return {
            "model": self.name, "batch_size": self.batch_size, "mode": "train" if self.train else "infer",
            "img_per_s": self.batch_size / latency, "latency_ms": latency * 1e3,
            "compile_s": self.compile_s, "peak_mem_mb": self.peak_mb, "gmacs": self.gmacs,
            "repeats": len(self.times),
        }


def print_row(r, file=sys.stdout):
    print(f"{r['model']:<34} {r['mode']:<5} {r['batch_size']:>5} {r['img_per_s']:>9.2f} {r['latency_ms']:>11.1f} "
          f"{r['compile_s']:>9.1f} {r['peak_mem_mb']:>9.0f} {r['gmacs']:>7.3f}", file=file, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["deit_small_patch16_224", "ppt_deit_small_patch16_224"])
    p.add_argument("--batch_size", nargs="+", type=int, default=[32])
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds over the models")
    p.add_argument("--iters", type=int, default=2, help="timed calls per model per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--train", action="store_true",
                   help="also time the trainer's training step (fwd+bwd, loss scaling, clipping, AdamW, EMA)")
    p.add_argument("--exported", action="store_true",
                   help="also time each model exported as MINDIR (tools/export.py) beside its Cell")
    p.add_argument("--amp_level", default="O0", choices=("O0", "O1", "O2", "O3"),
                   help="mixed precision (mindppt.models.amp.apply_amp) for inference and training; "
                        "the recipes use O2 on Ascend/GPU")
    p.add_argument("--loss_scale_type", default="dynamic", choices=("none", "fixed", "dynamic"),
                   help="--train: loss scaling of the training step")
    p.add_argument("--clip_grad", type=float, default=1.0, help="--train: global-norm clipping (0 = off)")
    p.add_argument("--ema", type=str2bool, default=True, help="--train: EMA of the weights (true/false)")
    p.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend", "auto"))
    p.add_argument("--jit_level", default="", help="O0/O1/O2; empty keeps MindSpore's default")
    p.add_argument("--json", default="", help="write the results as a JSON list")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        device = setup_device(args.device_target, mode="graph", jit_level=args.jit_level or None)
    except DeviceUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"mindspore {ms.__version__}, device {device}, cpus {os.cpu_count()}")
    header = (f"{'model':<34} {'mode':<5} {'batch':>5} {'img/s':>9} {'latency_ms':>11} {'compile_s':>9} "
              f"{'peak_MB':>9} {'GMACs':>7}")
    print(header)
    results = []
    train_options = ("--loss_scale_type", args.loss_scale_type, "--clip_grad", str(args.clip_grad),
                     "--ema", str(args.ema))
    modes = [False, True] if args.train else [False]
    for train in modes:
        for batch in args.batch_size:
            variants = [False, True] if args.exported and not train else [False]
            runners = [Runner(name, batch, train, args.image_size, args.num_classes, args.amp_level, train_options,
                              exported)
                       for name in args.models for exported in variants]
            for runner in runners:
                runner.compile(args.warmup)
            for _ in range(args.rounds):
                for runner in runners:
                    runner.measure(args.iters)
            rows = [runner.result() for runner in runners]
            base = rows[0]["img_per_s"]
            for row in rows:
                row["speedup_vs_first"] = row["img_per_s"] / base
                print_row(row)
            results.extend(rows)
            del runners
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(0 if isinstance(main(), list) else 2)
