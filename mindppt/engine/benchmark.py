"""Throughput and memory benchmarks in GRAPH_MODE: img/s, latency, compile time, peak memory, GMACs;
:func:`run_benchmark` is the whole of ``tools/benchmark.py``.

Two ways to measure, both alternating the candidates round after round (:mod:`mindppt.engine.timing`):

* in this process (default, :func:`measure_together`): the models of one group are compiled and warmed
  up apart, then their timed calls alternate, so machine drift hits them equally; the median call is
  reported. Peak memory is the process's resident set sampled while a model runs: it covers every model
  built so far.
* isolated (:func:`measure_alternating`): every measurement in a fresh process (:func:`measure_isolated`),
  the models alternating process by process. The process's peak resident set (``VmHWM``, compile
  included) is then one model's own: the honest way to compare memory. ``official_repo`` adds, in the
  same alternation, the official PyTorch PPT code on the same model, batch and training step (loss
  scaling, clipping, EMA, drop path: :func:`official_options`), timed by ``tools/official_ppt_timing.py``
  under ``official_python`` (a Python with torch and timm 0.4.12).

``train`` times the trainer's own training step (:func:`mindppt.engine.trainer.build_recipe_step`:
TrainStep with the recipe's AdamW and learning rates, drop path, soft-target cross entropy on smoothed
one-hot targets, and the given loss scaling, clipping and EMA).
"""
import datetime
import fnmatch
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

import mindspore as ms
import numpy as np
from mindspore import nn

from mindppt.config import add_options, tool_parser
from mindppt.data import smooth_one_hot
from mindppt.device import setup_device
from mindppt.engine.build import build_model
from mindppt.engine.cli import parse_cli
from mindppt.engine.export import EXPORT_FORMATS, export_model
from mindppt.engine.timing import alternate, random_images, round_robin
from mindppt.engine.trainer import build_recipe_step
from mindppt.errors import ConfigError
from mindppt.io import atomic_write
from mindppt.models import create_model, is_model, list_models
from mindppt.models.amp import apply_amp
from mindppt.models.flops import count_params, model_gmacs
from mindppt.process_memory import process_peak_mb


def train_config(name, batch_size, image_size, num_classes, options):
    """The configuration of a training run of ``name`` (the recipe defaults) with ``options`` on top."""
    return parse_cli(["--model", name, "--batch_size", str(batch_size), "--image_resize", str(image_size),
                      "--num_classes", str(num_classes), *options], tool="train")


def token_schedule(model):
    """Tokens entering the first block, then after each compression block (one entry for a dense model)."""
    return [model.token_schedule[0][0]] + [n_out for n_in, n_out in model.token_schedule if n_out < n_in]


class Runner:
    """One model at one batch size on a fixed random batch: its forward pass (``exported``: the MINDIR graph
    tools/export.py writes, in place of the Cell) or, with ``train``, the trainer's own training step
    (:func:`mindppt.engine.trainer.build_recipe_step`) on smoothed one-hot targets: ``cell``; ``call()``
    runs it once on the batch and returns its output. ``settings``: a dict of image_size (None: the
    model's own resolution), num_classes, amp_level and train_options (command-line style, on top of the
    recipe defaults)."""

    def __init__(self, name, batch_size, train, settings, exported=False):
        self.name, self.batch_size, self.train = name + (" [MINDIR]" if exported else ""), batch_size, train
        image_size, num_classes, amp_level = settings["image_size"], settings["num_classes"], settings["amp_level"]
        if train:
            if image_size is None:
                image_size = create_model(name, num_classes=num_classes).img_size
            args = train_config(name, batch_size, image_size, num_classes,
                                ("--amp_level", amp_level, *settings["train_options"]))
            self.model = build_model(args)
            self.cell = build_recipe_step(args, self.model).step
            self.cell.set_train(True)
            labels = np.random.default_rng(0).integers(0, num_classes, batch_size)
            targets = ms.Tensor(smooth_one_hot(labels, num_classes, args.label_smoothing))
            self.call = functools.partial(self.cell, random_images(batch_size, image_size), targets)
        else:
            self.model = create_model(name, num_classes=num_classes,
                                      **({} if image_size is None else {"img_size": image_size}))
            image_size = self.model.img_size
            self.cell = apply_amp(self.model, amp_level)
            if exported:
                args = train_config(name, batch_size, image_size, num_classes, ("--amp_level", amp_level))
                with tempfile.TemporaryDirectory() as tmp:
                    export_model(args, os.path.join(tmp, "model"), "MINDIR", batch_size)
                    self.cell = nn.GraphCell(ms.load(os.path.join(tmp, "model" + EXPORT_FORMATS["MINDIR"])))
            self.cell.set_train(False)
            self.call = functools.partial(self.cell, random_images(batch_size, image_size))
        self.image_size = image_size

    def row(self, timing):
        """The result row of this runner's :class:`~mindppt.engine.timing.Timing`."""
        latency = timing.median_s
        return {
            "model": self.name, "batch_size": self.batch_size, "mode": "train" if self.train else "infer",
            "img_per_s": self.batch_size / latency, "latency_ms": latency * 1e3,
            "compile_s": timing.compile_s, "peak_mem_mb": timing.peak_mb, "gmacs": model_gmacs(self.model),
            "repeats": len(timing.times), "image_size": self.image_size,
            "params_m": count_params(self.model) / 1e6,
            "tokens": token_schedule(self.model),
        }


PATTERN_CHARS = "*?["


def select_models(names):
    """The measurement groups of ``--models``: registered names as given form one group, alternated
    together. ``all`` or any shell-style pattern: every registered model a pattern matches, in dense/PPT
    pairs (a match of either name brings its partner), one group per pair. Raises ConfigError naming an
    unknown name or a pattern that matches nothing."""
    if not any(name == "all" or any(c in name for c in PATTERN_CHARS) for name in names):
        for name in names:
            if not is_model(name):
                raise ConfigError(f"--models: unknown model {name!r} (registered: {', '.join(list_models())}; "
                                  f"'all' or a pattern like 'deit_*' selects several)")
        return [list(dict.fromkeys(names))]  # a name given twice is measured once
    selected = set()
    for pattern in names:
        matches = list_models() if pattern == "all" else fnmatch.filter(list_models(), pattern)
        if not matches:
            raise ConfigError(f"--models: {pattern!r} matches no registered model (registered: "
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
    """Build a :class:`Runner` per (name, exported) of ``specs`` and time them alternately in this process
    (:func:`mindppt.engine.timing.alternate`, memory sampled); the rows of each, with img/s relative to the
    first. The runners (and their graphs) die with this call. ``settings``: the dict of :class:`Runner`
    plus warmup, rounds and iters."""
    runners = [Runner(name, batch, train, settings, exported) for name, exported in specs]
    timings = alternate({runner.name: runner.call for runner in runners}, rounds=settings["rounds"],
                        iters=settings["iters"], warmup=settings["warmup"], memory=True)
    rows = [runner.row(timings[runner.name]) for runner in runners]
    for row in rows:
        row["speedup_vs_first"] = row["img_per_s"] / rows[0]["img_per_s"]
    return rows


def _isolated_child():
    """Entry point of one isolated measurement: a JSON request on stdin, one JSON row on stdout."""
    request = json.loads(sys.stdin.read())
    setup_device(request["device"], mode="graph", jit_level=request["settings"]["jit_level"] or None)
    settings = dict(request["settings"], rounds=1)
    row = measure_together([(request["name"], False)], request["batch_size"], request["train"], settings)[0]
    del row["speedup_vs_first"]  # alone in its process: relative to nothing
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
    request = {"name": name, "batch_size": batch, "train": train, "settings": settings, "device": device}
    code = "from mindppt.engine.benchmark import _isolated_child; _isolated_child()"
    env_note = f"isolated measurement of {name} (batch {batch}, {'train' if train else 'infer'})"
    return _run_json([sys.executable, "-c", code], json.dumps(request), env_note)


OFFICIAL_TIMING = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "tools", "official_ppt_timing.py")


@functools.lru_cache(maxsize=None)
def _model_setting(name, num_classes):
    """(image size, PPT options of the official timing: none for a dense model) of a registered model."""
    model = create_model(name, num_classes=num_classes)
    if not model.compression_blocks:
        return model.img_size, ()
    return model.img_size, ("--ppt", "--r_tokens", str(max(model.r_per_block)), "--pp_loc_list",
                            *map(str, model.compression_blocks), "--threshold", repr(model.thresholds[0]))


def official_options(name, batch, train, settings):
    """The options of ``tools/official_ppt_timing.py`` that make the official code run what mindppt's
    :class:`Runner` runs for ``name``: its timm 0.4.12 model, PPT at the model's own r, blocks and
    threshold (``ppt_`` models), and with ``train`` the same training step (drop path, loss scaling,
    clipping and EMA of the recipe and ``settings['train_options']``)."""
    base = name[len("ppt_"):] if name.startswith("ppt_") else name
    img_size, ppt = _model_setting(name, settings["num_classes"])
    options = ["--model", base, "--batch_size", str(batch), "--warmup", str(settings["warmup"]),
               "--iters", str(settings["iters"]), *ppt]
    if settings["image_size"]:
        options += ["--image_size", str(settings["image_size"])]
    if train:
        args = train_config(name, batch, settings["image_size"] or img_size, settings["num_classes"],
                            settings["train_options"])
        options += ["--train", "--drop_path_rate", repr(args.drop_path_rate),
                    "--loss_scale", args.loss_scale_type, "--init_scale", repr(args.loss_scale),
                    "--clip_grad", repr(args.clip_value if args.clip_grad else 0.0),
                    "--model_ema_decay", repr(args.ema_decay if args.ema else 0.0)]
    return options


def measure_official(name, batch, train, settings, repo, python):
    """The official PyTorch PPT on the same model and step (:func:`official_options`) in a fresh process
    of ``python``. Same row keys as ours."""
    command = [python, OFFICIAL_TIMING, "--repo", repo, *official_options(name, batch, train, settings)]
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
    alternating process by process for ``settings['rounds']`` rounds
    (:func:`mindppt.engine.timing.round_robin`); one row per model and framework, the median of its
    rounds. ``progress(round_index, row)`` is called after each measurement."""
    frameworks = ("mindppt", "official") if official is not None else ("mindppt",)

    def measure(candidate, round_index):
        name, framework = candidate
        row = (measure_isolated(name, batch, train, settings, device) if framework == "mindppt" else
               measure_official(name, batch, train, settings, *official))
        if progress:
            progress(round_index, row)
        return row

    runs = round_robin([(name, framework) for name in names for framework in frameworks], settings["rounds"],
                       measure)
    return [_median_rows(rows) for rows in runs.values()]


USAGE = """\
Throughput and memory benchmark in GRAPH_MODE: img/s, latency, compile time, peak memory, GMACs.

Models are measured alternately so machine drift hits them equally; compilation and warm-up are excluded
and the median of the repeats is reported. --isolate measures each model in its own process (alternating
process by process), so the peak memory reported is that model's own. --official_repo PPT
--official_python VENV/bin/python also times the official PyTorch PPT code on each model in the same
alternation (docs/performance.md). --train also times the trainer's training step.

  python tools/benchmark.py --models deit_small_patch16_224 ppt_deit_small_patch16_224 \\
      --batch_size 1 8 32 [--train] [--isolate] [--exported] [--amp_level O2] [--json OUT.json]
  python tools/benchmark.py --models all --batch_size 32 --isolate --markdown zoo.md --json zoo.json
"""


def parse_options(argv=None):
    """The options of ``tools/benchmark.py``: its own, and the shared ones (model, device, training step)
    with the meaning they have everywhere (:mod:`mindppt.config`). Raises ConfigError on a usage error."""
    p = tool_parser("tools/benchmark.py", USAGE)
    own = p.add_argument_group("benchmark")
    own.add_argument("--models", nargs="+", default=["deit_small_patch16_224", "ppt_deit_small_patch16_224"],
                     help="registered names (measured alternately together), or 'all' / shell-style patterns "
                          "('deit_*'): dense/PPT pairs, measured pair by pair")
    own.add_argument("--batch_size", nargs="+", type=int, default=[32], help="batch sizes to measure")
    own.add_argument("--rounds", type=int, default=5, help="alternating rounds over the models")
    own.add_argument("--iters", type=int, default=2, help="timed calls per model per round")
    own.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
    own.add_argument("--isolate", action="store_true",
                     help="each measurement in its own process: the peak memory is that model's own")
    own.add_argument("--official_repo", default="",
                     help="checkout of the official PyTorch PPT repository: time it too (implies --isolate)")
    own.add_argument("--official_python", default="",
                     help="Python with torch, torchvision and timm==0.4.12 that runs the official code")
    own.add_argument("--train", action="store_true",
                     help="also time the trainer's training step (fwd+bwd, loss scaling, clipping, AdamW, EMA)")
    own.add_argument("--exported", action="store_true",
                     help="also time each model exported as MINDIR (tools/export.py) beside its Cell")
    own.add_argument("--json", default="", help="write the results as a JSON list")
    own.add_argument("--markdown", default="", help="write the closing table (markdown, with command and machine)")
    add_options(p.add_argument_group("model"), ("num_classes", "image_resize"))
    add_options(p.add_argument_group("device"), ("device_target", "jit_level"))
    add_options(p.add_argument_group("precision and training step (--train)"),
                ("amp_level", "loss_scale_type", "clip_grad", "clip_value", "ema", "drop_path_rate"),
                defaults={"loss_scale_type": "dynamic", "clip_grad": True, "clip_value": 1.0, "ema": True})
    return p.parse_args(argv)


def check_options(options):
    """Raise ConfigError naming the first option of ``options`` (:func:`parse_options`) that cannot be
    used, before any measurement; returns the measurement groups of :func:`select_models`."""
    for name, values, least in (("--batch_size", options.batch_size, 1), ("--rounds", [options.rounds], 1),
                                ("--iters", [options.iters], 1), ("--warmup", [options.warmup], 0),
                                ("--num_classes", [options.num_classes], 1),
                                ("--image_resize", [] if options.image_resize is None else [options.image_resize], 1)):
        for value in values:
            if value < least:
                raise ConfigError(f"{name} {value}: expected an integer >= {least}")
    if bool(options.official_repo) != bool(options.official_python):
        raise ConfigError("--official_repo and --official_python go together (the official code runs under a "
                          "Python with torch and timm==0.4.12)")
    if options.official_repo:
        if not os.path.isfile(os.path.join(options.official_repo, "ppt_deit.py")):
            raise ConfigError(f"--official_repo {options.official_repo}: no ppt_deit.py there (expected a "
                              "checkout of the official PPT repository)")
        if shutil.which(options.official_python) is None:
            raise ConfigError(f"--official_python {options.official_python}: not an executable (expected a "
                              "Python with torch, torchvision and timm==0.4.12)")
        if options.amp_level != "O0":
            raise ConfigError(f"--amp_level {options.amp_level} with --official_repo: the official timing runs "
                              "in float32 on the CPU (its autocast is CUDA's); expected O0")
        if options.train and options.loss_scale_type == "fixed":
            raise ConfigError("--loss_scale_type fixed with --official_repo: the official training step scales "
                              "dynamically (timm's NativeScaler); expected dynamic or none")
    for name, path in (("--json", options.json), ("--markdown", options.markdown)):
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if folder and not os.path.isdir(folder):
            raise ConfigError(f"{name} {path}: the folder {folder} does not exist")
    return select_models(options.models)


def run_benchmark(options, command, out=print):
    """The whole benchmark of ``tools/benchmark.py``'s ``options`` (:func:`parse_options`): the options
    checked (:func:`check_options`), the device set up in GRAPH_MODE, then each group of
    :func:`select_models` measured in this process or isolated (``options.isolate``, or
    ``options.official_repo``) at every batch size and mode. Prints a line per measurement through ``out``,
    writes ``options.json`` (the rows) and ``options.markdown`` (the report) when set, and returns
    ``(rows, markdown report)``. ``command``: the command line the report quotes."""
    groups = check_options(options)
    device = setup_device(options.device_target, mode="graph", jit_level=options.jit_level or None)
    load_start = load_average()
    machine = (f"mindspore {ms.__version__}, device {device}, {os.cpu_count()} cpus ({cpu_name()}), "
               f"load average (1/5/15 min) at start {load_start}")
    out(machine)
    out(ROW_HEADER)
    train_options = ("--loss_scale_type", options.loss_scale_type, "--clip_grad", str(options.clip_grad),
                     "--clip_value", str(options.clip_value), "--ema", str(options.ema),
                     "--drop_path_rate", str(options.drop_path_rate))
    settings = {"image_size": options.image_resize, "num_classes": options.num_classes,
                "amp_level": options.amp_level, "train_options": train_options, "warmup": options.warmup,
                "rounds": options.rounds, "iters": options.iters, "jit_level": options.jit_level or ""}
    official = (options.official_repo, options.official_python) if options.official_repo else None
    isolate = options.isolate or official is not None
    results = []
    modes = [False, True] if options.train else [False]
    for group in groups:
        for train in modes:
            for batch in options.batch_size:
                if isolate:
                    rows = measure_alternating(
                        group, batch, train, settings, device, official,
                        progress=lambda i, row: out(f"round {i + 1}/{options.rounds}: {format_row(row)}"))
                else:
                    variants = [False, True] if options.exported and not train else [False]
                    rows = measure_together([(name, exported) for name in group for exported in variants],
                                            batch, train, settings)
                for row in rows:
                    out(format_row(row))
                results.extend(rows)
    machine += f", at end {load_average()}"
    how = (f"each measurement in its own process, alternated over {options.rounds} rounds (median img/s of the "
           f"rounds, each the median of {options.iters} calls; peak = the process's resident maximum, compile "
           "included)" if isolate else
           f"median of {options.rounds * options.iters} timed calls per model, models alternated in one process")
    clip = f"{options.clip_value:g}" if options.clip_grad else "off"
    train_note = (f"; training step: loss scaling {options.loss_scale_type}, clipping {clip}, "
                  f"EMA {options.ema}, drop path {options.drop_path_rate}" if options.train else "")
    report = (f"{datetime.date.today().isoformat()}: `{command}`\n\n{machine}; GRAPH_MODE, amp "
              f"{options.amp_level}, random weights, {options.num_classes} classes, {how}{train_note}.\n\n"
              f"{zoo_table(results)}")
    if official is not None:
        versions = next((r["versions"] for r in results if r.get("framework") == "official"), "")
        report += f"\nAgainst the official PyTorch PPT ({versions}):\n\n{official_table(results)}"
    if options.json:
        atomic_write(options.json, json.dumps(results, indent=2))
    if options.markdown:
        atomic_write(options.markdown, report)
    return results, report
