"""Tuning PPT to a budget (``tools/tune.py``): for one set of weights and one target, search r per block,
the compression blocks and per-block thresholds (from pooled shares) on calibration images, then report the
chosen setting against the dense model, the paper's default scaled to the same budget, and pool-only and
prune-only at the same GMACs, on held-out images.

Targets: ``gmacs`` (at most G GMACs per image), ``ratio`` (at most R times the dense GMACs),
``speedup`` (forward img/s at least S times the dense model's, measured here at the config's batch size:
converted to a GMACs level by timing the model compressed in every allowed block at a bisected r), and
``drop`` (the cheapest setting whose calibration top-1 is at most P points below the dense model's).

Data: the images of ``data_dir/val_split`` are split at random (seeded) into ``calib_images`` calibration
images, the only ones the search sees, and the rest, held out for the report.

Every evaluated setting is a row of ``tune.csv`` as soon as it is done (the table rewritten atomically):
interrupted, the run keeps them, and the same command replays the search, taking each setting found in the
table from it instead of evaluating it again (rows of other weights, model, data or calibration split are
refused). The search itself is :mod:`mindppt.engine.search`.
"""
import argparse
import collections
import json
import math
import os
import time

import numpy as np
import yaml

from mindppt.config import load_config
from mindppt.data import scan_image_folder
from mindppt.errors import ConfigError
from mindppt.io import atomic_write
from mindppt.logger import format_eta
from mindppt.models.deit import PPT_DEFAULTS
from mindppt.models.flops import model_gmacs
from mindppt.plots import tuning_figure

from .analysis import calibrate_thresholds, collect_decisions, json_finite
from .build import build_eval_model, create_eval_loader
from .evaluate import evaluate
from .search import (
    POLICIES,
    Candidate,
    SearchRun,
    SearchSpace,
    better,
    cheapest_within,
    random_search,
    staged_search,
)
from .sweep import file_digest, read_rows, write_rows
from .timing import paired_throughput

__all__ = ["TARGETS", "COLUMNS", "REPORTED", "check_target", "split_images", "paper_blocks", "search_space",
           "target_gmacs", "CalibrationEvaluator", "run_tune", "run_comparison", "format_report",
           "format_comparison"]

TARGETS = ("gmacs", "ratio", "speedup", "drop")
TARGET_FLAGS = {"gmacs": "--target_gmacs", "ratio": "--target_ratio", "speedup": "--target_speedup",
                "drop": "--max_drop"}
COLUMNS = ("policy", "r_tokens", "pp_loc_list", "shares", "thresholds", "gmacs", "top1", "top5", "loss",
           "pooled_share", "num_samples", "seconds", "model", "weights_sha256", "data", "calibration")
NUMBER_COLUMNS = ("gmacs", "top1", "top5", "loss", "num_samples", "seconds")
KEY_COLUMNS = COLUMNS[:4]
REPORTED = ("chosen", "dense", "paper default", "pool-only", "prune-only")
PAPER_DEPTH = 12  # the paper's blocks 3, 6, 9 are of DeiT's 12


# ---- targets and data --------------------------------------------------------------------------------
def check_target(kind, value, budget):
    """The checks that need no model: a ratio in (0, 1], a speedup above 1, a drop and GMACs not below
    zero, a budget of at least one evaluation. Raises ConfigError."""
    flag = TARGET_FLAGS.get(kind)
    if flag is None:
        raise ConfigError(f"unknown target {kind!r}: expected one of {', '.join(TARGETS)}")
    if value is None or not math.isfinite(value):
        raise ConfigError(f"{flag} needs a finite number, got {value}")
    if kind == "ratio" and not 0.0 < value <= 1.0:
        raise ConfigError(f"{flag} {value:g} is outside (0, 1]: it is a fraction of the dense model's GMACs")
    if kind == "speedup" and value <= 1.0:
        raise ConfigError(f"{flag} {value:g} is not above 1: the dense model already runs at 1x; ask for more")
    if kind == "drop" and value < 0:
        raise ConfigError(f"{flag} {value:g} is below zero: it is the top-1 points the setting may lose")
    if kind == "gmacs" and value <= 0:
        raise ConfigError(f"{flag} {value:g} is not above zero")
    if budget < 1:
        raise ConfigError(f"--budget {budget}: the search needs at least one evaluation")


def target_gmacs(kind, value, dense_gmacs, least_gmacs):
    """The GMACs level of a ``gmacs`` or ``ratio`` target; ConfigError when no setting reaches it or it is
    above the dense model."""
    gmacs = value if kind == "gmacs" else value * dense_gmacs
    what = f"{TARGET_FLAGS[kind]} {value:g}" + (f" ({gmacs:.4g} GMACs)" if kind == "ratio" else "")
    if gmacs > dense_gmacs * (1 + 1e-9):
        raise ConfigError(f"{what} is above the dense model's {dense_gmacs:.4g} GMACs: nothing to compress")
    if gmacs < least_gmacs:
        raise ConfigError(f"{what} is unreachable: the most compressed setting (every allowed block removing all "
                          f"it can) costs {least_gmacs:.4g} GMACs ({least_gmacs / dense_gmacs:.3f} of dense)")
    return gmacs


def split_images(total, calib_images, seed):
    """``(calibration, held_out)``: disjoint sorted index lists covering ``range(total)``, drawn with
    ``seed``; ``calib_images`` None takes half (at most 5000)."""
    count = min(total // 2, 5000) if calib_images is None else int(calib_images)
    if not 1 <= count < total:
        raise ConfigError(f"--calib_images {count} leaves no held-out image: the split has {total} images; "
                          f"use 1 to {total - 1}")
    order = np.random.default_rng(seed).permutation(total)
    return sorted(order[:count].tolist()), sorted(order[count:].tolist())


def paper_blocks(depth):
    """The paper's compression blocks (3, 6, 9 of DeiT's 12) at the same relative depths of ``depth``."""
    return tuple(sorted({b * depth // PAPER_DEPTH for b in PPT_DEFAULTS["pp_loc_list"]}))


def search_space(dense, blocks=None, uniform_r=False, policies=POLICIES):
    """The :class:`~mindppt.engine.search.SearchSpace` of the architecture of ``dense`` (a dense model):
    GMACs of any r per block by its analytic count, ``blocks`` (default all) allowed to compress."""
    depth = dense.depth
    blocks = list(range(depth)) if blocks is None else [int(b) for b in blocks]
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad or not blocks:
        raise ConfigError(f"--blocks {bad or blocks}: {dense.__class__.__name__} has blocks 0..{depth - 1}")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ConfigError(f"--policy {unknown or policies}: expected some of {', '.join(POLICIES)}")
    every = list(range(depth))

    def removed(r):
        return [n_in - n_out for n_in, n_out in dense.schedule_with(list(r), every)]

    def gmacs(r):
        return model_gmacs(dense, dense.schedule_with(list(r), every))

    return SearchSpace(depth, blocks, gmacs, removed, uniform_r=uniform_r, policies=policies)


def _setting_args(args, r):
    run = argparse.Namespace(**vars(args))
    blocks = [i for i, v in enumerate(r) if v]
    run.r_tokens, run.pp_loc_list = (list(r), blocks) if blocks else (0, args.pp_loc_list)
    return run


def _threshold_text(thresholds):
    return ",".join("inf" if math.isinf(t) else f"{t:.9g}" for t in thresholds)


def _thresholds(row):
    return [float(t) for t in row["thresholds"].split(",")] if row["thresholds"] else []


def _key(row):
    return tuple(row[c] for c in KEY_COLUMNS)


def _dense(depth):
    return Candidate(tuple([0] * depth))


# ---- evaluations on the calibration images -----------------------------------------------------------
class CalibrationEvaluator:
    """``evaluate(candidate)`` for a search: the setting's thresholds calibrated to its shares and its
    top-1 / top-5 / loss on the calibration images, each new row appended to ``csv_path`` at once; a
    setting already in that table is taken from it (``reused``) instead. ``budget`` and ``label`` only
    shape the progress lines."""

    def __init__(self, args, dense, loader, csv_path, identity, *, logger=None, budget=None, label=""):
        self.args, self.dense, self.loader = args, dense, loader
        self.csv_path, self.identity = csv_path, identity
        self.logger, self.budget, self.label = logger, budget, label
        self.rows = read_rows(csv_path, identity, COLUMNS, NUMBER_COLUMNS, what="tuning")
        self.by_key = {_key(row): row for row in self.rows}
        self.models = collections.OrderedDict()  # r -> model: a graph is compiled once per structure
        self.asked = self.new = self.reused = 0
        self.new_seconds = 0.0
        self.best = None

    def model(self, r):
        """The evaluation model of structure ``r`` (the last few are kept, compiled)."""
        if not any(r):
            return self.dense
        if r not in self.models:
            self.models[r], _ = build_eval_model(_setting_args(self.args, r))
            while len(self.models) > 3:
                self.models.popitem(last=False)
        self.models.move_to_end(r)
        return self.models[r]

    def apply(self, candidate):
        """Set the model of ``candidate`` to the thresholds of its shares, calibrated on the calibration
        images; returns ``(model, thresholds, pooled share per block)``."""
        model = self.model(candidate.r)
        if candidate.policy == "dense":
            return model, [], []
        if all(s in (0.0, 1.0) for s in candidate.shares):  # always prune / always pool: no pass needed
            thresholds = [0.0 if s == 0 else math.inf for s in candidate.shares]
            model.set_threshold(thresholds)
            return model, thresholds, list(candidate.shares)
        thresholds, decisions = calibrate_thresholds(
            model, list(candidate.shares),
            lambda: collect_decisions(model, self.loader, batch_size=self.args.batch_size))
        return model, thresholds, decisions.pooled.mean(axis=0).tolist()

    def __call__(self, candidate):
        key = candidate.key()
        counted = candidate.policy != "dense"
        self.asked += counted
        if key in self.by_key:
            self.reused += counted
            return self._note(self.by_key[key], counted)
        return self._evaluate(candidate, key, counted)

    def _evaluate(self, candidate, key, counted):
        start = time.perf_counter()
        model, thresholds, pooled = self.apply(candidate)
        metrics = evaluate(model, self.loader, batch_size=self.args.batch_size)
        row = dict(zip(KEY_COLUMNS, key))
        row.update(thresholds=_threshold_text(thresholds), gmacs=float(model_gmacs(model)), top1=metrics["top1"],
                   top5=metrics["top5"], loss=metrics["loss"], pooled_share=",".join(f"{p:.4g}" for p in pooled),
                   num_samples=float(metrics["num_samples"]), seconds=time.perf_counter() - start, **self.identity)
        self.rows.append(row)
        self.by_key[key] = row
        write_rows(self.csv_path, self.rows, COLUMNS)
        self.new += counted
        self.new_seconds += row["seconds"] if counted else 0.0
        self._note(row, counted)
        if self.logger is not None:
            best = self.best
            budget = f"/{self.budget}" if self.budget else ""
            eta = ""
            if counted and self.budget:
                eta = f", eta {format_eta(self.new_seconds / self.new * (self.budget - self.asked))} at most"
            self.logger.info(
                "%s[%s%s] %s r=%s blocks=%s shares=%s: calibration top-1 %.2f%% (loss %.4f), %.4f GMACs; best %.2f%%"
                " (%.1fs%s)", self.label, self.asked if counted else "dense", budget if counted else "",
                row["policy"], _short_r(row["r_tokens"]), row["pp_loc_list"] or "-", row["shares"] or "-",
                row["top1"], row["loss"], row["gmacs"], best["top1"] if best else row["top1"], row["seconds"], eta)
        return row

    def _note(self, row, counted):
        if counted and better(row, self.best):
            self.best = row
        return row


def _short_r(text):
    values = [v for v in text.split(",") if v != "0"]
    return values[0] if len(set(values)) == 1 else text


# ---- target speedup ----------------------------------------------------------------------------------
def gmacs_for_speedup(args, dense, space, speedup, *, logger=None, rounds=3, repeats=5):
    """The GMACs level of a speedup target: forward img/s of the model compressing every allowed block by
    one r, timed alternately with the dense model at the config's batch size, bisected on r for the least r
    that reaches ``speedup``. Returns ``(gmacs, probes)`` (``probes``: r, GMACs and measured speedup of
    every timing). ConfigError when even the most compressed setting is slower."""
    blocks, ones = list(space.blocks), [1.0] * len(space.blocks)
    probes = []

    def measure(r_value):
        r = space.r_vector(blocks, r_value, ones)
        model, _ = build_eval_model(_setting_args(args, r))
        speeds = paired_throughput({"setting": model, "dense": dense}, batch_size=args.batch_size,
                                   image_size=args.image_resize, rounds=rounds, repeats=repeats)
        probes.append({"r": r_value, "gmacs": space.gmacs(r), "speedup": speeds["setting"] / speeds["dense"]})
        if logger is not None:
            logger.info("speed probe: r=%d in blocks %s, %.4f GMACs: %.2fx dense img/s (batch %d)", r_value,
                        blocks, probes[-1]["gmacs"], probes[-1]["speedup"], args.batch_size)
        return probes[-1]["speedup"]

    lo, hi = 0, int(space.max_r)
    if measure(hi) < speedup:
        raise ConfigError(f"--target_speedup {speedup:g} is unreachable here: the most compressed setting (r={hi} "
                          f"in blocks {blocks}) ran {probes[-1]['speedup']:.2f}x the dense model's img/s at batch "
                          f"size {args.batch_size}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if measure(mid) >= speedup else (mid, hi)
    return space.gmacs(space.r_vector(blocks, hi, ones)), probes


# ---- the report on held-out images -------------------------------------------------------------------
def _report_settings(space, chosen, chosen_row):
    """``[(name, r, thresholds)]`` of :data:`REPORTED`: the chosen setting, dense, the paper's (its blocks at
    the same relative depth, one r fitted to the chosen GMACs, threshold 7e-5), and pool-only and
    prune-only with the chosen r and blocks."""
    dense = tuple([0] * space.depth)
    settings = [("chosen", chosen.r, _thresholds(chosen_row)), ("dense", dense, [])]
    if chosen.policy == "dense":
        return settings
    paper = paper_blocks(space.depth)
    paper_r = space.fit(paper, space.gmacs(chosen.r)) or space.r_vector(paper, space.max_r, [1.0] * len(paper))
    count = len(chosen.blocks)
    settings += [("paper default", paper_r, [PPT_DEFAULTS["threshold"]] * sum(1 for v in paper_r if v)),
                 ("pool-only", chosen.r, [math.inf] * count), ("prune-only", chosen.r, [0.0] * count)]
    return settings


def heldout_report(args, evaluator, space, chosen, heldout_loader, *, logger=None, rounds=3, repeats=5):
    """Each setting of :data:`REPORTED` on the calibration and the held-out images, with its GMACs and its
    forward img/s (all timed alternately, the config's batch size). Returns a list of dicts."""
    chosen_row = evaluator.by_key[chosen.key()]
    models, out = {}, []
    for name, r, thresholds in _report_settings(space, chosen, chosen_row):
        model = evaluator.dense if not any(r) else build_eval_model(_setting_args(args, r))[0]
        if thresholds:
            model.set_threshold(thresholds)
        models[name] = model
        calibration = evaluate(model, evaluator.loader, batch_size=args.batch_size)
        heldout = evaluate(model, heldout_loader, batch_size=args.batch_size)
        blocks = [i for i, v in enumerate(r) if v]
        out.append({"name": name, "r_tokens": ",".join(map(str, r)), "pp_loc_list": blocks,
                    "thresholds": thresholds, "gmacs": float(model_gmacs(model)),
                    "calibration_top1": calibration["top1"], "heldout_top1": heldout["top1"],
                    "heldout_top5": heldout["top5"], "heldout_loss": heldout["loss"],
                    "heldout_images": heldout["num_samples"]})
        if logger is not None:
            logger.info("report: %s (r=%s, blocks %s): held-out top-1 %.2f%%, %.4f GMACs", name,
                        _short_r(out[-1]["r_tokens"]), blocks or "-", heldout["top1"], out[-1]["gmacs"])
    speeds = paired_throughput(models, batch_size=args.batch_size, image_size=args.image_resize, rounds=rounds,
                               repeats=repeats)
    dense_gmacs = next(row["gmacs"] for row in out if row["name"] == "dense")
    for row in out:
        row.update(img_per_s=speeds[row["name"]], speedup=speeds[row["name"]] / speeds["dense"],
                   gmacs_ratio=row["gmacs"] / dense_gmacs)
    return out


def format_report(report):
    """The held-out table as aligned text."""
    head = ("setting", "r", "blocks", "threshold", "GMACs", "x dense", "top-1 %", "top-5 %", "img/s", "x dense",
            "calib top-1 %")
    body = []
    for row in report:
        thresholds = row["thresholds"]
        shown = ("-" if not thresholds else f"{thresholds[0]:.3g}" if len(set(thresholds)) == 1
                 else ",".join(f"{t:.3g}" for t in thresholds))
        body.append((row["name"], _short_r(row["r_tokens"]) if row["pp_loc_list"] else "0",
                     ",".join(map(str, row["pp_loc_list"])) or "-", shown, f"{row['gmacs']:.4f}",
                     f"{row['gmacs_ratio']:.2f}", f"{row['heldout_top1']:.2f}", f"{row['heldout_top5']:.2f}",
                     f"{row['img_per_s']:.0f}", f"{row['speedup']:.2f}", f"{row['calibration_top1']:.2f}"))
    widths = [max(len(str(line[i])) for line in [head] + body) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in [head] + body]
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


# ---- outputs -----------------------------------------------------------------------------------------
def tuned_config(args, chosen, thresholds, out_dir, header):
    """The recipe of ``args`` (its file, then the options given on the command line) with the chosen r,
    blocks and thresholds (for evaluation and, as the starting point of PPT fine-tuning, for training),
    ``ckpt_path`` the tuned weights and ``ckpt_save_dir`` inside ``out_dir``: a YAML text that
    ``tools/eval.py -c`` and ``tools/train.py -c`` take as it is."""
    recipe = dict(load_config(args.config)) if getattr(args, "config", None) else {}
    for key in getattr(args, "command_line_options", ()):
        value = getattr(args, key)
        recipe[key] = list(value) if isinstance(value, tuple) else value
    values = [v for v in chosen.r if v]
    if not values:
        recipe.update(r_tokens=0, eval_threshold=None, threshold=None)
    else:
        same = len(set(thresholds)) == 1
        recipe.update(r_tokens=values[0] if len(set(values)) == 1 else list(chosen.r), pp_loc_list=list(chosen.blocks),
                      eval_threshold=thresholds[0] if same else list(thresholds),
                      threshold=thresholds[0] if same else list(thresholds))
    recipe.update(ckpt_path=args.ckpt_path, ckpt_save_dir=os.path.join(out_dir, "train"))
    return header + yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None)


def _identity(args, calibration, total, seed):
    return {"model": f"{args.model}@{args.image_resize}px", "weights_sha256": file_digest(args.ckpt_path),
            "data": os.path.join(args.data_dir, args.val_split),
            "calibration": f"seed {seed}: {len(calibration)} of {total} images"}


def _prepare(args, kind, value, budget, blocks, uniform_r, policies):
    """Checks (target first, before any model is built), then the dense model, the search space and the
    GMACs level of a gmacs / ratio target."""
    check_target(kind, value, budget)
    weights = str(args.ckpt_path or "")
    if not os.path.isfile(weights):
        raise ConfigError(f"checkpoint not found: {weights!r} (pass the weights to tune with --ckpt_path)")
    dense, _ = build_eval_model(_setting_args(args, ()))
    space = search_space(dense, blocks, uniform_r, policies)
    dense_gmacs = float(model_gmacs(dense))
    level = target_gmacs(kind, value, dense_gmacs, space.least_gmacs()) if kind in ("gmacs", "ratio") else None
    total = len(scan_image_folder(args.data_dir, args.val_split))
    return dense, space, dense_gmacs, level, total


def _search(kind, value, space, run, level, dense_row, config_blocks):
    """The chosen candidate of the staged search for the target."""
    paper = paper_blocks(space.depth)
    if kind == "drop":
        chosen = cheapest_within(space, run, dense_row["top1"] - value, dense_row["gmacs"], config_blocks, paper)
        return chosen or _dense(space.depth)
    return staged_search(space, run, level, config_blocks, paper)


def run_tune(args, kind, value, out_dir, *, budget=24, calib_images=None, blocks=None, uniform_r=False,
             policies=POLICIES, logger=None, speed_rounds=3, speed_repeats=5):
    """tools/tune.py: search a setting for the target ``kind`` (:data:`TARGETS`) ``value`` with the staged
    search (:func:`mindppt.engine.search.staged_search`, at most ``budget`` evaluations on ``calib_images``
    calibration images drawn with ``args.seed``), report it on the held-out images and write into
    ``out_dir``: tune.csv (every evaluated setting), tune.json (target, split, rows, report, timings),
    report.txt (the held-out table), tuned.yaml (the recipe with the chosen setting) and tune.png.
    Returns the tune.json record plus ``text`` (the table)."""
    dense, space, dense_gmacs, level, total = _prepare(args, kind, value, budget, blocks, uniform_r, policies)
    calibration, heldout = split_images(total, calib_images, args.seed)
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "tune.csv")
    identity = _identity(args, calibration, total, args.seed)
    start = time.perf_counter()
    probes = []
    if kind == "speedup":
        level, probes = gmacs_for_speedup(args, dense, space, value, logger=logger, rounds=speed_rounds,
                                          repeats=speed_repeats)
    calib_loader, _ = create_eval_loader(args, indices=calibration)
    evaluator = CalibrationEvaluator(args, dense, calib_loader, csv_path, identity, logger=logger, budget=budget)
    if logger is not None:
        what = f"{TARGET_FLAGS[kind]} {value:g}" + (f" ({level:.4f} GMACs, {level / dense_gmacs:.3f} of dense "
                                                     f"{dense_gmacs:.4f})" if level else "")
        logger.info("tuning %s (weights %s) for %s: at most %d evaluations on %d calibration images of %s/%s "
                    "(seed %d; %d held out); %d settings already in %s", args.model, args.ckpt_path, what, budget,
                    len(calibration), args.data_dir, args.val_split, args.seed, len(heldout),
                    len(evaluator.rows), csv_path)
    dense_row = evaluator(_dense(space.depth))
    run = SearchRun(evaluator, budget)
    chosen = _search(kind, value, space, run, level, dense_row, args.pp_loc_list)
    search_seconds = time.perf_counter() - start
    chosen_row = evaluator.by_key[chosen.key()]
    if logger is not None:
        logger.info("search done in %.0fs: %d settings evaluated now, %d taken from %s; chosen: %s r=%s blocks %s "
                    "shares %s (calibration top-1 %.2f%%, %.4f GMACs)", search_seconds, evaluator.new,
                    evaluator.reused, csv_path, chosen.policy, _short_r(chosen_row["r_tokens"]),
                    chosen_row["pp_loc_list"] or "-", chosen_row["shares"] or "-", chosen_row["top1"],
                    chosen_row["gmacs"])
    heldout_loader, _ = create_eval_loader(args, indices=heldout)
    report = heldout_report(args, evaluator, space, chosen, heldout_loader, logger=logger, rounds=speed_rounds,
                            repeats=speed_repeats)
    text = format_report(report)
    chosen_report = report[0]
    header = (f"# tools/tune.py: {TARGET_FLAGS[kind]} {value:g}, chosen by {run.spent} evaluations on "
              f"{len(calibration)} calibration images (seed {args.seed}) of {identity['data']}: "
              f"{chosen_report['gmacs']:.4f} GMACs, held-out top-1 {chosen_report['heldout_top1']:.2f}% on "
              f"{len(heldout)} images\n")
    atomic_write(os.path.join(out_dir, "tuned.yaml"), tuned_config(args, chosen, _thresholds(chosen_row), out_dir,
                                                                   header))
    atomic_write(os.path.join(out_dir, "report.txt"), text + "\n")
    evaluated = [row for row in evaluator.rows if row["policy"] != "dense"]
    tuning_figure(os.path.join(out_dir, "tune.png"),
                  {p: [(row["gmacs"], row["top1"]) for row in evaluated if row["policy"] == p] for p in POLICIES},
                  report, target=level,
                  title=f"{args.model}: {TARGET_FLAGS[kind]} {value:g}, {len(evaluated)} settings evaluated")
    record = {"target": {"kind": kind, "flag": TARGET_FLAGS[kind], "value": value, "gmacs": level,
                         "speed_probes": probes},
              "dense_gmacs": dense_gmacs, "budget": budget, "strategy": "staged", "evaluations": run.spent,
              "search_seconds": search_seconds, "evaluated_now": evaluator.new, "taken_from_csv": evaluator.reused,
              "evaluation_seconds": sum(row["seconds"] for row in evaluated),
              "split": {"seed": args.seed, "images": total, "calibration": calibration, "heldout": heldout},
              "chosen": {"policy": chosen.policy, "r_tokens": list(chosen.r), "pp_loc_list": list(chosen.blocks),
                         "shares": list(chosen.shares), "thresholds": _thresholds(chosen_row),
                         "calibration": chosen_row},
              "report": report, "rows": evaluator.rows}
    atomic_write(os.path.join(out_dir, "tune.json"), json.dumps(json_finite(record), indent=1) + "\n")
    record["text"] = text
    return record


# ---- the comparison with random search -----------------------------------------------------------------
def run_comparison(args, kind, value, out_dir, seeds, *, budget=24, calib_images=None, blocks=None,
                   uniform_r=False, policies=POLICIES, logger=None, speed_rounds=3, speed_repeats=5):
    """The staged search against random search (:func:`mindppt.engine.search.random_search`) at the same
    budget and target, for each seed of ``seeds`` (the seed draws the calibration split, shared by both,
    and the random settings): each strategy's chosen setting on the held-out images. Every evaluation goes
    to ``out_dir/seed_<s>/<strategy>/tune.csv`` (resumable as a tuning run). Writes compare.json and
    compare.txt; returns the record plus ``text``."""
    if kind == "drop":
        raise ConfigError("--compare_random compares the best top-1 at a cost: give --target_gmacs, --target_ratio "
                          "or --target_speedup, not --max_drop")
    dense, space, dense_gmacs, level, total = _prepare(args, kind, value, budget, blocks, uniform_r, policies)
    probes = []
    if kind == "speedup":
        level, probes = gmacs_for_speedup(args, dense, space, value, logger=logger, rounds=speed_rounds,
                                          repeats=speed_repeats)
    results = []
    for seed in seeds:
        calibration, heldout = split_images(total, calib_images, seed)
        identity = _identity(args, calibration, total, seed)
        calib_loader, _ = create_eval_loader(args, indices=calibration)
        heldout_loader, _ = create_eval_loader(args, indices=heldout)
        entry = {"seed": seed}
        for strategy in ("staged", "random"):
            folder = os.path.join(out_dir, f"seed_{seed}", strategy)
            os.makedirs(folder, exist_ok=True)
            evaluator = CalibrationEvaluator(args, dense, calib_loader, os.path.join(folder, "tune.csv"), identity,
                                             logger=logger, budget=budget, label=f"seed {seed} {strategy} ")
            dense_row = evaluator(_dense(space.depth))
            run = SearchRun(evaluator, budget)
            chosen = (_search(kind, value, space, run, level, dense_row, args.pp_loc_list) if strategy == "staged"
                      else random_search(space, run, level, seed))
            row = evaluator.by_key[chosen.key()]
            model = evaluator.model(chosen.r)
            if row["thresholds"]:
                model.set_threshold(_thresholds(row))
            metrics = evaluate(model, heldout_loader, batch_size=args.batch_size)
            entry[strategy] = {"evaluations": run.spent, "policy": chosen.policy, "r_tokens": row["r_tokens"],
                               "pp_loc_list": row["pp_loc_list"], "shares": row["shares"], "gmacs": row["gmacs"],
                               "calibration_top1": row["top1"], "heldout_top1": metrics["top1"]}
            if logger is not None:
                logger.info("seed %d %s: chose %s r=%s blocks %s shares %s: calibration top-1 %.2f%%, held-out "
                            "%.2f%% (%d evaluations)", seed, strategy, chosen.policy, _short_r(row["r_tokens"]),
                            row["pp_loc_list"], row["shares"] or "-", row["top1"], metrics["top1"], run.spent)
        entry["dense_heldout_top1"] = evaluate(dense, heldout_loader, batch_size=args.batch_size)["top1"]
        results.append(entry)
    summary = {}
    for strategy in ("staged", "random"):
        values = np.array([e[strategy]["heldout_top1"] for e in results])
        summary[strategy] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                             "min": float(values.min()), "max": float(values.max())}
    record = {"target": {"kind": kind, "flag": TARGET_FLAGS[kind], "value": value, "gmacs": level,
                         "speed_probes": probes},
              "dense_gmacs": dense_gmacs, "budget": budget, "seeds": list(seeds), "per_seed": results,
              "heldout_top1": summary}
    record["text"] = format_comparison(record)
    atomic_write(os.path.join(out_dir, "compare.json"), json.dumps(json_finite({k: v for k, v in record.items()
                                                                               if k != "text"}), indent=1) + "\n")
    atomic_write(os.path.join(out_dir, "compare.txt"), record["text"] + "\n")
    return record


def format_comparison(record):
    """Per seed the held-out top-1 of each strategy's choice, then mean, standard deviation and range."""
    head = ("seed", "evaluations", "staged top-1 %", "staged choice", "random top-1 %", "random choice",
            "dense top-1 %")
    body = []
    for e in record["per_seed"]:
        cells = [str(e["seed"]), f"{e['staged']['evaluations']} / {e['random']['evaluations']}"]
        for strategy in ("staged", "random"):
            s = e[strategy]
            cells += [f"{s['heldout_top1']:.2f}", f"{s['policy']} r={_short_r(s['r_tokens'])}"]
        body.append(cells + [f"{e['dense_heldout_top1']:.2f}"])
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if "choice" in h else c.rjust(w) for c, w, h in zip(line, widths, head))
             for line in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for strategy in ("staged", "random"):
        s = record["heldout_top1"][strategy]
        lines.append(f"{strategy}: held-out top-1 mean {s['mean']:.2f}, std {s['std']:.2f}, range {s['min']:.2f} to "
                     f"{s['max']:.2f}")
    return "\n".join(lines)
