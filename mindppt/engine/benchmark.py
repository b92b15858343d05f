"""Throughput and memory benchmarks in GRAPH_MODE: img/s, latency, compile time, peak memory, GMACs.

Two ways to measure (``tools/benchmark.py`` is the command line):

* in this process (default): models of one group alternate their timed rounds, so machine drift hits
  them equally; compilation and warm-up are excluded and the median of the repeats is reported. Peak
  memory is the process's resident set sampled while a model runs: it covers every model built so far.
* ``isolate``: every measurement in a fresh process (:func:`measure_isolated`), the models alternating
  process by process, round after round. The process's peak resident set (``ru_maxrss``, compile
  included) is then one model's own: the honest way to compare memory. ``official_repo`` adds, in the
  same alternation, the official PyTorch PPT code on the same model and batch, timed by
  ``tools/official_ppt_timing.py`` under ``official_python`` (a Python with torch and timm 0.4.12).

``train`` times the trainer's own training step (mindppt.engine.trainer.build_train_step: TrainStep
with the recipe's AdamW, drop path, soft-target cross entropy on smoothed one-hot targets, and the given
loss scaling, clipping and EMA).
"""
import datetime
import fnmatch
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import mindspore as ms
import numpy as np
from mindspore import nn

from mindppt.config import parse_args as parse_config
from mindppt.data import smooth_one_hot
from mindppt.engine.build import build_model
from mindppt.engine.export import EXPORT_FORMATS, export_model
from mindppt.engine.schedule import create_lr_schedule, resolve_lr
from mindppt.engine.trainer import build_train_step
from mindppt.models import create_model, is_model, list_models
from mindppt.models.amp import apply_amp
from mindppt.models.flops import count_params, model_gmacs


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
        self.params_m = count_params(self.model) / 1e6
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
    ratio PPT / dense; with per-process peaks (isolated runs), the peak resident memory of each and
    their ratio."""
    rows = [r for r in results if "[MINDIR]" not in r["model"] and r.get("framework", "mindppt") == "mindppt"]
    by_key = {(r["model"], r["batch_size"], r["mode"]): r for r in rows}
    with_mode = any(r["mode"] == "train" for r in rows)
    with_memory = any(r.get("process_peak_mb") for r in rows)
    lines = ["| model | params (M) | dense GMACs | PPT GMACs | PPT tokens | batch |" + (" mode |" if with_mode else "")
             + " dense img/s | PPT img/s | PPT / dense |"
             + (" dense peak (MB) | PPT peak (MB) | PPT / dense memory |" if with_memory else ""),
             "|---|---:|---:|---:|---|---:|" + ("---|" if with_mode else "") + "---:|---:|---:|"
             + ("---:|---:|---:|" if with_memory else "")]
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
        line = (f"| {base} | {info['params_m']:.2f} | {_fmt(dense and dense['gmacs'], '.3f')} | "
                f"{_fmt(ppt and ppt['gmacs'], '.3f')} | {'->'.join(map(str, ppt['tokens'])) if ppt else '-'} | "
                f"{r['batch_size']} |" + (f" {r['mode']} |" if with_mode else "")
                + f" {_fmt(dense and dense['img_per_s'], '.2f')} | {_fmt(ppt and ppt['img_per_s'], '.2f')} | "
                f"{_fmt(ratio, '.2f')} |")
        if with_memory:
            dense_mb, ppt_mb = dense and dense.get("process_peak_mb"), ppt and ppt.get("process_peak_mb")
            memory_ratio = ppt_mb / dense_mb if dense_mb and ppt_mb else None
            line += f" {_fmt(dense_mb, '.0f')} | {_fmt(ppt_mb, '.0f')} | {_fmt(memory_ratio, '.3f')} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def official_table(results):
    """Markdown table of isolated mindppt rows beside the official PyTorch PPT's on the same model, batch
    and mode: img/s, peak memory and the ratios mindppt / official."""
    ours = {(r["model"], r["batch_size"], r["mode"]): r for r in results if r.get("framework") == "mindppt"}
    theirs = {(r["model"], r["batch_size"], r["mode"]): r for r in results if r.get("framework") == "official"}
    lines = ["| model | batch | mode | official img/s | mindppt img/s | mindppt / official | official peak (MB) | "
             "mindppt peak (MB) | mindppt / official memory |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for key, mine in ours.items():
        other = theirs.get(key)
        if other is None:
            continue
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {other['img_per_s']:.2f} | {mine['img_per_s']:.2f} | "
                     f"{mine['img_per_s'] / other['img_per_s']:.2f} | {other['process_peak_mb']:.0f} | "
                     f"{mine['process_peak_mb']:.0f} | {mine['process_peak_mb'] / other['process_peak_mb']:.2f} |")
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


ROW_HEADER = (f"{'model':<34} {'framework':<9} {'mode':<5} {'batch':>5} {'img/s':>9} {'latency_ms':>11} "
              f"{'compile_s':>9} {'peak_MB':>9} {'GMACs':>7}")


def format_row(r):
    """One console line of a measurement (peak: the process's own in isolated runs, else sampled)."""
    peak = r.get("process_peak_mb") or r.get("peak_mem_mb")
    return (f"{r['model']:<34} {r.get('framework', 'mindppt'):<9} {r['mode']:<5} {r['batch_size']:>5} "
            f"{r['img_per_s']:>9.2f} {r['latency_ms']:>11.1f} {_fmt(r.get('compile_s'), '9.1f')} "
            f"{_fmt(peak, '9.0f')} {_fmt(r.get('gmacs'), '7.3f')}")


def measure_together(specs, batch, train, settings):
    """Build (name, exported) runners, compile them, alternate the timed rounds; the rows of each, with
    img/s relative to the first. The runners (and their graphs) die with this call. ``settings``: a dict
    of image_size, num_classes, amp_level, train_options, warmup, rounds, iters."""
    runners = [Runner(name, batch, train, settings["image_size"], settings["num_classes"], settings["amp_level"],
                      settings["train_options"], exported)
               for name, exported in specs]
    for runner in runners:
        runner.compile(settings["warmup"])
    for _ in range(settings["rounds"]):
        for runner in runners:
            runner.measure(settings["iters"])
    rows = [runner.result() for runner in runners]
    for row in rows:
        row["speedup_vs_first"] = row["img_per_s"] / rows[0]["img_per_s"]
    return rows


def process_peak_mb():
    """This process's peak resident memory so far (MB; compile included): the high-water mark of its own
    address space (``VmHWM``). Not ``ru_maxrss``: Linux carries that over an exec from the forking parent,
    so a child started by a large parent would report at least the parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _isolated_child():
    """Entry point of one isolated measurement: a JSON request on stdin, one JSON row on stdout."""
    request = json.loads(sys.stdin.read())
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(request["device"])
    runner = Runner(request["name"], request["batch_size"], request["train"], request["image_size"],
                    request["num_classes"], request["amp_level"], request["train_options"])
    runner.compile(request["warmup"])
    runner.measure(request["iters"])
    row = runner.result()
    row.update(framework="mindppt", process_peak_mb=process_peak_mb())
    print(json.dumps(row))


def _run_json(command, stdin_text, what):
    proc = subprocess.run(command, input=stdin_text, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(lines[-1])


def measure_isolated(name, batch, train, settings, device="CPU"):
    """One measurement of ``name`` in a fresh Python process: the row of :class:`Runner` plus
    ``process_peak_mb``, that process's peak resident memory (one model, compile included)."""
    request = {"name": name, "batch_size": batch, "train": train, "image_size": settings["image_size"],
               "num_classes": settings["num_classes"], "amp_level": settings["amp_level"],
               "train_options": list(settings["train_options"]), "warmup": settings["warmup"],
               "iters": settings["iters"], "device": device}
    code = "from mindppt.engine.benchmark import _isolated_child; _isolated_child()"
    env_note = f"isolated measurement of {name} (batch {batch}, {'train' if train else 'infer'})"
    return _run_json([sys.executable, "-c", code], json.dumps(request), env_note)


OFFICIAL_TIMING = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "tools", "official_ppt_timing.py")


@functools.lru_cache(maxsize=None)
def _ppt_setting(name, num_classes):
    """(r, compression blocks, threshold) of a registered model, or None for a dense one."""
    model = create_model(name, num_classes=num_classes)
    if not model.compression_blocks:
        return None
    return max(model.r_per_block), tuple(model.compression_blocks), model.thresholds[0]


def measure_official(name, batch, train, settings, repo, python):
    """The official PyTorch PPT on the same model (its timm 0.4.12 name; ``ppt_`` applies PPT with the
    model's own r, blocks and threshold) in a fresh process of ``python``. Same row keys as ours."""
    base = name[len("ppt_"):] if name.startswith("ppt_") else name
    command = [python, OFFICIAL_TIMING, "--repo", repo, "--model", base, "--batch_size", str(batch),
               "--warmup", str(settings["warmup"]), "--iters", str(settings["iters"])]
    if settings["image_size"]:
        command += ["--image_size", str(settings["image_size"])]
    ppt = _ppt_setting(name, settings["num_classes"])
    if ppt is not None:
        r, blocks, threshold = ppt
        command += ["--ppt", "--r_tokens", str(r), "--pp_loc_list", *map(str, blocks), "--threshold", repr(threshold)]
    if train:
        command.append("--train")
    row = _run_json(command, "", f"official timing of {name}")
    return {"model": name, "batch_size": batch, "mode": "train" if train else "infer", "framework": "official",
            "img_per_s": row["img_per_s"], "latency_ms": 1e3 * batch / row["img_per_s"],
            "process_peak_mb": row["peak_rss_mb"], "versions": f"torch {row['torch']}, timm {row['timm']}"}


def _median_rows(rows):
    """One row from the rounds of one measurement: median img/s and latency, largest peak."""
    out = dict(rows[0])
    out["img_per_s"] = statistics.median(r["img_per_s"] for r in rows)
    out["latency_ms"] = statistics.median(r["latency_ms"] for r in rows)
    out["process_peak_mb"] = max(r["process_peak_mb"] for r in rows)
    out["rounds"] = [round(r["img_per_s"], 3) for r in rows]
    return out


def measure_alternating(names, batch, train, settings, device="CPU", official=None, progress=None):
    """Each model (and, with ``official`` = (repo, python), the official code on it) in its own process,
    alternating process by process for ``settings['rounds']`` rounds; one row per model and framework."""
    runs = {}
    for round_index in range(settings["rounds"]):
        for name in names:
            row = measure_isolated(name, batch, train, settings, device)
            runs.setdefault((name, "mindppt"), []).append(row)
            if progress:
                progress(round_index, row)
            if official is not None:
                row = measure_official(name, batch, train, settings, *official)
                runs.setdefault((name, "official"), []).append(row)
                if progress:
                    progress(round_index, row)
    return [_median_rows(rows) for rows in runs.values()]


def run_benchmark(args, command, out=print):
    """The whole benchmark of ``tools/benchmark.py``'s options: each group of :func:`select_models`, in
    this process or isolated (``args.isolate``, or ``args.official_repo``), every batch size and mode.
    Prints a line per measurement through ``out`` and returns (rows, markdown report)."""
    groups = select_models(args.models)
    device = ms.get_context("device_target")
    load_start = load_average()
    machine = (f"mindspore {ms.__version__}, device {device}, {os.cpu_count()} cpus ({cpu_name()}), "
               f"load average (1/5/15 min) at start {load_start}")
    out(machine)
    out(ROW_HEADER)
    train_options = ("--loss_scale_type", args.loss_scale_type, "--clip_grad", str(args.clip_grad),
                     "--ema", str(args.ema), "--drop_path_rate", str(args.drop_path_rate))
    settings = {"image_size": args.image_size, "num_classes": args.num_classes, "amp_level": args.amp_level,
                "train_options": train_options, "warmup": args.warmup, "rounds": args.rounds, "iters": args.iters}
    official = (args.official_repo, args.official_python) if args.official_repo else None
    isolate = args.isolate or official is not None
    results = []
    modes = [False, True] if args.train else [False]
    for group in groups:
        for train in modes:
            for batch in args.batch_size:
                if isolate:
                    rows = measure_alternating(
                        group, batch, train, settings, device, official,
                        progress=lambda i, row: out(f"round {i + 1}/{args.rounds}: {format_row(row)}"))
                else:
                    variants = [False, True] if args.exported and not train else [False]
                    rows = measure_together([(name, exported) for name in group for exported in variants],
                                            batch, train, settings)
                for row in rows:
                    out(format_row(row))
                results.extend(rows)
    machine += f", at end {load_average()}"
    how = (f"each measurement in its own process, alternated over {args.rounds} rounds (median img/s of the "
           f"rounds, each the median of {args.iters} calls; peak = the process's resident maximum, compile "
           "included)" if isolate else
           f"median of {args.rounds * args.iters} timed calls per model, models alternated in one process")
    train_note = (f"; training step: loss scaling {args.loss_scale_type}, clip_grad {args.clip_grad}, "
                  f"EMA {args.ema}, drop path {args.drop_path_rate}" if args.train else "")
    report = (f"{datetime.date.today().isoformat()}: `{command}`\n\n{machine}; GRAPH_MODE, amp {args.amp_level}, "
              f"random weights, {args.num_classes} classes, {how}{train_note}.\n\n{zoo_table(results)}")
    if official is not None:
        versions = next((r["versions"] for r in results if r.get("framework") == "official"), "")
        report += f"\nAgainst the official PyTorch PPT ({versions}):\n\n{official_table(results)}"
    return results, report
