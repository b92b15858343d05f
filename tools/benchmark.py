"""Throughput benchmark in GRAPH_MODE: img/s, latency, compile time, peak memory, GMACs.

Models are measured alternately in one process so machine drift hits them equally; compilation and
warm-up are excluded and the median of the repeats is reported. ``--train`` also times the trainer's own
training step (mindppt.engine.trainer.build_train_step: TrainStep with the recipe's AdamW, drop path,
soft-target cross entropy on smoothed one-hot targets, and by default dynamic loss scaling, gradient
clipping and EMA, as tools/op_support.py compiles it).

``--exported`` also times each model exported by tools/export.py (MINDIR, portable ops, loaded with
mindspore.load + nn.GraphCell) beside its Cell.

``--models all`` (or shell-style patterns such as ``'deit_*'``) selects registered models and measures them
pair by pair: each dense model with its ``ppt_`` variant, alternately, one pair's graphs freed before the
next. Each model runs at its own resolution unless ``--image_size`` is given. The closing table (model,
parameters, dense and PPT GMACs, the PPT token schedule, img/s of both and their ratio) is printed as
markdown, with the command and the machine, and written by ``--markdown OUT.md``.

  python tools/benchmark.py --models deit_small_patch16_224 ppt_deit_small_patch16_224 \
      --batch_size 1 8 32 [--train] [--exported] [--amp_level O2] [--json OUT.json]
  python tools/benchmark.py --models all --batch_size 32 --markdown zoo.md --json zoo.json
"""
import argparse
import datetime
import fnmatch
import gc
import json
import os
import platform
import shlex
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
from mindppt.io import atomic_write  # noqa: E402
from mindppt.models import create_model, is_model, list_models  # noqa: E402
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


def token_schedule(model):
    """Tokens entering the first block, then after each compression block (one entry for a dense model)."""
    return [model.token_schedule[0][0]] + [n_out for n_in, n_out in model.token_schedule if n_out < n_in]


class Runner:
    """One model at one batch size, inference or the trainer's full training step. ``image_size`` None:
    the model's own resolution."""

    def __init__(self, name, batch_size, train, image_size, num_classes, amp_level="O0", train_options=(),
                 exported=False):
        self.name, self.batch_size, self.train = name + (" [MINDIR]" if exported else ""), batch_size, train
        size_kwargs = {} if image_size is None else {"img_size": image_size}
        if not train:
            self.model = create_model(name, num_classes=num_classes, **size_kwargs)
            image_size = self.model.img_size
        elif image_size is None:
            image_size = create_model(name, num_classes=num_classes).img_size
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
            self.net = apply_amp(self.model, amp_level)
            if exported:  # the graph tools/export.py writes, in place of the Cell
                args = train_config(name, batch_size, image_size, num_classes, ("--amp_level", amp_level))
                with tempfile.TemporaryDirectory() as tmp:
                    export_model(args, os.path.join(tmp, "model"), "MINDIR", batch_size)
                    self.net = nn.GraphCell(ms.load(os.path.join(tmp, "model" + EXPORT_FORMATS["MINDIR"])))
            self.net.set_train(False)
        self.gmacs = model_gmacs(self.model)
        self.image_size = image_size
        self.params_m = sum(p.size for p in self.model.trainable_params()) / 1e6
        self.tokens = token_schedule(self.model)
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
            "repeats": len(self.times), "image_size": self.image_size, "params_m": self.params_m,
            "tokens": self.tokens,
        }


PATTERN_CHARS = "*?["


def select_models(names):
    """The measurement groups of ``--models``: registered names as given form one group, alternated
    together. ``all`` or any shell-style pattern: every registered model a pattern matches, in dense/PPT
    pairs (a match of either name brings its partner), one group per pair. Raises ValueError naming an
    unknown name or a pattern that matches nothing."""
    if not any(name == "all" or any(c in name for c in PATTERN_CHARS) for name in names):
        for name in names:
            if not is_model(name):
                raise ValueError(f"--models: unknown model {name!r} (registered: {', '.join(list_models())}; "
                                 f"'all' or a pattern like 'deit_*' selects several)")
        return [list(names)]
    selected = set()
    for pattern in names:
        matches = list_models() if pattern == "all" else fnmatch.filter(list_models(), pattern)
        if not matches:
            raise ValueError(f"--models: {pattern!r} matches no registered model (registered: "
                             f"{', '.join(list_models())})")
        selected.update(matches)
    bases = sorted({name[len("ppt_"):] if name.startswith("ppt_") else name for name in selected})
    return [[name for name in (base, "ppt_" + base) if is_model(name)] for base in bases]


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def zoo_table(results):
    """Markdown table of the Cell rows of ``results``: per dense model (or unpaired model), batch size and
    mode, its parameters, the dense and ``ppt_`` GMACs, the PPT token schedule, img/s of each and the
    ratio PPT / dense."""
    rows = [r for r in results if "[MINDIR]" not in r["model"]]
    by_key = {(r["model"], r["batch_size"], r["mode"]): r for r in rows}
    with_mode = any(r["mode"] == "train" for r in rows)
    lines = ["| model | params (M) | dense GMACs | PPT GMACs | PPT tokens | batch |" + (" mode |" if with_mode else "")
             + " dense img/s | PPT img/s | PPT / dense |",
             "|---|---:|---:|---:|---|---:|" + ("---|" if with_mode else "") + "---:|---:|---:|"]
    seen = set()
    for r in rows:
        base = r["model"][len("ppt_"):] if r["model"].startswith("ppt_") else r["model"]
        key = (base, r["batch_size"], r["mode"])
        if key in seen:
            continue
        seen.add(key)
        dense = by_key.get(key)
        ppt = by_key.get(("ppt_" + base, r["batch_size"], r["mode"]))
        if dense is None:  # a PPT model measured without its dense partner
            base = r["model"]
        info = dense or ppt
        ratio = ppt["img_per_s"] / dense["img_per_s"] if dense and ppt else None
        lines.append(
            f"| {base} | {info['params_m']:.2f} | {_fmt(dense and dense['gmacs'], '.3f')} | "
            f"{_fmt(ppt and ppt['gmacs'], '.3f')} | {'->'.join(map(str, ppt['tokens'])) if ppt else '-'} | "
            f"{r['batch_size']} |" + (f" {r['mode']} |" if with_mode else "")
            + f" {_fmt(dense and dense['img_per_s'], '.2f')} | {_fmt(ppt and ppt['img_per_s'], '.2f')} | "
            f"{_fmt(ratio, '.2f')} |")
    return "\n".join(lines) + "\n"


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def print_row(r, file=sys.stdout):
    print(f"{r['model']:<34} {r['mode']:<5} {r['batch_size']:>5} {r['img_per_s']:>9.2f} {r['latency_ms']:>11.1f} "
          f"{r['compile_s']:>9.1f} {r['peak_mem_mb']:>9.0f} {r['gmacs']:>7.3f}", file=file, flush=True)


def measure_together(specs, batch, train, args, train_options):
    """Build (name, exported) runners, compile them, alternate the timed rounds; the rows of each, with
    img/s relative to the first. The runners (and their graphs) die with this call."""
    runners = [Runner(name, batch, train, args.image_size, args.num_classes, args.amp_level, train_options,
                      exported)
               for name, exported in specs]
    for runner in runners:
        runner.compile(args.warmup)
    for _ in range(args.rounds):
        for runner in runners:
            runner.measure(args.iters)
    rows = [runner.result() for runner in runners]
    for row in rows:
        row["speedup_vs_first"] = row["img_per_s"] / rows[0]["img_per_s"]
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["deit_small_patch16_224", "ppt_deit_small_patch16_224"],
                   help="registered names (measured alternately together), or 'all' / shell-style patterns "
                        "('deit_*'): dense/PPT pairs, measured pair by pair")
    p.add_argument("--batch_size", nargs="+", type=int, default=[32])
    p.add_argument("--image_size", type=int, default=None, help="input resolution (default: each model's own)")
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
    p.add_argument("--markdown", default="", help="write the closing table (markdown, with command and machine)")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    command = "python tools/benchmark.py " + shlex.join(argv)
    try:
        groups = select_models(args.models)
        device = setup_device(args.device_target, mode="graph", jit_level=args.jit_level or None)
    except (ValueError, DeviceUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    load_start = load_average()
    machine = (f"mindspore {ms.__version__}, device {device}, {os.cpu_count()} cpus ({cpu_name()}), "
               f"load average (1/5/15 min) at start {load_start}")
    print(machine)
    header = (f"{'model':<34} {'mode':<5} {'batch':>5} {'img/s':>9} {'latency_ms':>11} {'compile_s':>9} "
              f"{'peak_MB':>9} {'GMACs':>7}")
    print(header)
    results = []
    train_options = ("--loss_scale_type", args.loss_scale_type, "--clip_grad", str(args.clip_grad),
                     "--ema", str(args.ema))
    modes = [False, True] if args.train else [False]
    for group in groups:
        for train in modes:
            for batch in args.batch_size:
                variants = [False, True] if args.exported and not train else [False]
                specs = [(name, exported) for name in group for exported in variants]
                rows = measure_together(specs, batch, train, args, train_options)
                for row in rows:
                    print_row(row)
                results.extend(rows)
                gc.collect()  # the group's graphs and buffers go before the next group's are built
    machine += f", at end {load_average()}"
    table = zoo_table(results)
    report = (f"{datetime.date.today().isoformat()}: `{command}`\n\n{machine}; GRAPH_MODE, amp {args.amp_level}, "
              f"random weights, {args.num_classes} classes, median of {args.rounds * args.iters} timed calls per "
              f"model.\n\n{table}")
    print()
    print(report, end="")
    if args.json:
        atomic_write(args.json, json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        atomic_write(args.markdown, report)
        print(f"wrote {args.markdown}")
    return results


if __name__ == "__main__":
    sys.exit(0 if isinstance(main(), list) else 2)
