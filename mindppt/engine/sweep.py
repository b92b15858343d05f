"""Off-the-shelf sweep of PPT settings (the paper's Figure 4 and its prune-only / pool-only ablation):
for each setting (tokens removed, compression blocks, threshold, policy) of one set of weights, top-1,
top-5 and loss on the evaluation data, analytic GMACs, forward img/s measured alternately with the dense
model, and the share of images each compression block pooled.

Policies: ``adaptive`` is PPT at the given threshold; ``prune`` and ``pool`` force one policy for every
image (threshold 0 and infinity), so the three curves share the same GMACs levels. The dense model is
always the first row.

A block removes at most half of its unprotected tokens, so a large r is clamped block by block: the rows
are labelled with the r each block actually removes (``--r 1000`` on 17 tokens at blocks 1, 2, 3 becomes
``0,8,4,2,0,0``), and requested settings that come out the same are measured once.

Rows go to ``sweep.csv`` as each one finishes (the whole file rewritten atomically), so an interrupted
sweep keeps what it finished, and running it again computes only the settings not in the file.
"""
import argparse
import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from mindppt.errors import ConfigError
from mindppt.io import atomic_write
from mindppt.logger import Progress, format_eta
from mindppt.models.flops import model_gmacs
from mindppt.plots import tradeoff_figure

from .analysis import collect_decisions
from .build import build_eval_model, create_eval_loader
from .evaluate import evaluate
from .timing import paired_throughput

__all__ = ["POLICIES", "FORCED_THRESHOLD", "COLUMNS", "IDENTITY_COLUMNS", "Setting", "expand_settings",
           "resolve_settings", "file_digest", "read_rows", "write_rows", "pareto_front", "compare_policies",
           "format_table", "format_comparison", "run_sweep", "write_reports"]

POLICIES = ("adaptive", "prune", "pool")
FORCED_THRESHOLD = {"prune": 0.0, "pool": math.inf}  # variance < 0 never holds, < inf always
COLUMNS = ("policy", "r_tokens", "pp_loc_list", "threshold", "gmacs", "top1", "top5", "loss", "img_per_s",
           "dense_img_per_s", "speedup", "pooled_share", "tokens_per_block", "num_samples", "model", "ckpt_path",
           "weights_sha256", "data")
# What the rows of one table must share: a resumed sweep must not mix weights, models or data.
IDENTITY_COLUMNS = ("model", "weights_sha256", "data")
KEY_COLUMNS = COLUMNS[:4]
NUMBER_COLUMNS = ("gmacs", "top1", "top5", "loss", "img_per_s", "dense_img_per_s", "speedup", "num_samples")


def _text(value):
    """A setting value as written in the CSV: ``3``, ``1,2,3``, ``0.004``, ``inf``; None (the config's or
    the model's default) as ``default``."""
    if value is None:
        return "default"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.9g}"
    return str(value)


@dataclass(frozen=True)
class Setting:
    policy: str  # "dense", or one of POLICIES
    r_tokens: object = 0  # int, or a tuple with one int per block
    pp_loc_list: object = None  # tuple of blocks; None = the config's / model's
    threshold: object = None  # float, or a tuple with one per compression block

    def key(self):
        if self.policy == "dense":
            return ("dense", "0", "", "")
        return (self.policy, _text(self.r_tokens), _text(self.pp_loc_list), _text(self.threshold))

    def model_group(self):
        """Settings of one group share one model (and compiled graph): only the threshold differs."""
        return (self.r_tokens, self.pp_loc_list)


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def expand_settings(r_values, thresholds, pp_loc_lists, policies):
    """The dense setting, then for every compression-block list and r: each threshold for ``adaptive``,
    and one setting each for ``prune`` and ``pool``. Grouped so that each model is built once."""
    if not r_values:
        raise ConfigError("give at least one --r value")
    for r in r_values:
        if not any(r if isinstance(r, list) else [r]):
            raise ConfigError(f"--r {_text(r)} compresses no tokens; the dense model is always the first row")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown --policy {unknown}: expected some of {', '.join(POLICIES)}")
    settings = [Setting("dense")]
    for pp_loc in pp_loc_lists or [None]:
        for r in r_values:
            for policy in policies:
                for threshold in (thresholds or [None]) if policy == "adaptive" else [FORCED_THRESHOLD[policy]]:
                    setting = Setting(policy, _frozen(r), _frozen(pp_loc), _frozen(threshold))
                    if setting not in settings:
                        settings.append(setting)
    return settings


def _effective_group(r_tokens, pp_loc_list, model):
    """``(r, blocks, removed)`` of the setting ``r_tokens`` at ``pp_loc_list`` as ``model``'s architecture
    runs it: ``removed`` per compression block, ``blocks`` those that remove tokens, ``r`` an int when
    they all remove the same, else one entry per block. None when no block removes any (dense)."""
    try:
        schedule = model.schedule_with(list(r_tokens) if isinstance(r_tokens, tuple) else r_tokens, pp_loc_list)
    except ValueError as e:
        raise ConfigError(f"--r {_text(r_tokens)} at blocks {_text(pp_loc_list)}: {e}") from None
    per_block = [n_in - n_out for n_in, n_out in schedule]
    blocks = tuple(i for i, r in enumerate(per_block) if r)
    if not blocks:
        return None
    removed = [per_block[i] for i in blocks]
    return (removed[0] if len(set(removed)) == 1 else tuple(per_block)), blocks, removed


def _asked(group):
    r_tokens, pp_loc_list = group
    return f"--r {_text(r_tokens)}" + (f" at blocks {_text(pp_loc_list)}" if pp_loc_list is not None else "")


def resolve_settings(settings, model):
    """``(settings, notes)``: each setting relabelled with what ``model`` (any model of the architecture)
    removes (see :func:`_effective_group`), equal ones kept once, in order; ``notes`` say which --r became
    which r and which settings were the same as an earlier one."""
    groups, notes = {}, []
    for setting in settings:
        group = setting.model_group()
        if setting.policy == "dense" or group in groups:
            continue
        effective = _effective_group(*group, model)
        asked = _asked(group)
        groups[group] = effective
        if effective is None:
            notes.append(f"{asked} removes no tokens: it is the dense row")
            continue
        r, blocks, removed = effective
        earlier = [g for g, e in groups.items() if g != group and e is not None and e[:2] == (r, blocks)]
        if earlier:
            notes.append(f"{asked} is the same setting as {_asked(earlier[0])} (r={_text(r)}): measured once")
        elif r != group[0] or blocks != tuple(sorted(group[1] or blocks)):
            notes.append(f"{asked} became r={_text(r)}: blocks {list(blocks)} remove {removed} tokens "
                         f"(at most half of a block's unprotected tokens)")
    resolved = []
    for setting in settings:
        if setting.policy != "dense":
            effective = groups[setting.model_group()]
            if effective is None:
                continue
            setting = Setting(setting.policy, effective[0], effective[1], setting.threshold)
        if setting not in resolved:
            resolved.append(setting)
    return resolved, notes


def _row_key(row):
    return tuple(row[c] for c in KEY_COLUMNS)


def file_digest(path):
    """The first 16 hex digits of the SHA-256 of a file (a retrained checkpoint at the same path differs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_rows(path, identity=None, columns=COLUMNS, number_columns=NUMBER_COLUMNS, what="sweep"):
    """Rows of an existing ``sweep.csv`` (numbers as floats), or ``[]``. With ``identity`` (values of
    :data:`IDENTITY_COLUMNS`), rows of another model, other weights or other data are refused: their
    settings would be skipped as if done. ``columns``, ``number_columns``, ``what``: another table kept
    the same way (tools/tune.py's tune.csv)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"cannot read the {what} rows in {path}: {err}") from None
    if tuple(header) != tuple(columns):
        raise ConfigError(f"{path} is not a {what} table of this version (columns {header}); use another --out "
                          f"or remove it")
    for row in rows:
        for column, expected in (identity or {}).items():
            if row[column] != str(expected):
                raise ConfigError(f"{path} holds a {what} of {column} {row[column]!r}, not {str(expected)!r}; use "
                                  f"another --out, or remove the file to start over")
        for column in number_columns:
            row[column] = float(row[column])
    return rows


def write_rows(path, rows, columns=COLUMNS):
    """All rows, atomically (a reader or a crash sees the previous table or the new one)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: (f"{row[c]:.9g}" if isinstance(row[c], float) else row[c]) for c in columns})
    return atomic_write(path, text.getvalue())


def pareto_front(rows):
    """The rows no other row beats: none has at most their GMACs and at least their top-1, and is better in
    one of the two. In order of GMACs."""
    front = []
    for row in rows:
        dominated = any(o["gmacs"] <= row["gmacs"] and o["top1"] >= row["top1"]
                        and (o["gmacs"] < row["gmacs"] or o["top1"] > row["top1"]) for o in rows)
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: (r["gmacs"], -r["top1"]))


def compare_policies(rows):
    """Per GMACs level (settings of equal cost) and block list: prune-only, pool-only and the best and median
    adaptive top-1, and the margin of the best adaptive over the better single policy."""
    levels = {}
    for row in rows:
        if row["policy"] != "dense":
            levels.setdefault((round(row["gmacs"], 9), row["r_tokens"], row["pp_loc_list"]), []).append(row)
    out = []
    for (gmacs, r, pp), group in sorted(levels.items()):
        entry = {"gmacs": gmacs, "r_tokens": r, "pp_loc_list": pp}
        for policy in ("prune", "pool"):
            tops = [g["top1"] for g in group if g["policy"] == policy]
            entry[policy] = max(tops) if tops else None
        adaptive = [g for g in group if g["policy"] == "adaptive"]
        if adaptive:
            best = max(adaptive, key=lambda g: g["top1"])
            entry.update(adaptive_best=best["top1"], adaptive_best_threshold=best["threshold"],
                         adaptive_median=float(np.median([g["top1"] for g in adaptive])))
            singles = [entry[p] for p in ("prune", "pool") if entry[p] is not None]
            if singles:
                entry["adaptive_margin"] = best["top1"] - max(singles)
        out.append(entry)
    return out


def format_table(rows, front_keys=()):
    """The rows as an aligned text table; ``*`` marks the rows whose key is in ``front_keys``."""
    front_keys = {tuple(k) for k in front_keys}
    head = ("policy", "r", "blocks", "threshold", "GMACs", "top-1 %", "top-5 %", "img/s", "x dense", "pooled",
            "front")
    body = [(r["policy"], r["r_tokens"], r["pp_loc_list"] or "-", r["threshold"] or "-", f"{r['gmacs']:.4f}",
             f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['img_per_s']:.0f}", f"{r['speedup']:.2f}",
             r["pooled_share"] or "-", "*" if _row_key(r) in front_keys else "") for r in rows]
    widths = [max(len(str(line[i])) for line in [head] + body) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in [head] + body]
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


def format_comparison(comparison):
    """One line per GMACs level that has the adaptive policy and a single policy."""
    shown = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return "\n".join(
        f"{c['gmacs']:.4f} GMACs (r={c['r_tokens']}, blocks {c['pp_loc_list']}): prune {shown(c['prune'])}, pool "
        f"{shown(c['pool'])}, adaptive best {c['adaptive_best']:.2f} (threshold {c['adaptive_best_threshold']}), "
        f"median {c['adaptive_median']:.2f}: best adaptive {c['adaptive_margin']:+.2f} points over the better single "
        f"policy" for c in comparison if "adaptive_margin" in c)


def write_reports(out_dir, rows, title=None, notes=()):
    """``sweep.json`` (rows, Pareto front, policy comparison, ``notes``), ``sweep.txt`` (the notes of
    :func:`resolve_settings`, the table and the comparison) and ``sweep.png`` (top-1 against GMACs per
    policy, Pareto front ringed, dense star). Returns the JSON record plus ``text``, the content of
    sweep.txt."""
    front = pareto_front(rows)
    comparison = compare_policies(rows)
    record = {"rows": rows, "pareto_front": [list(_row_key(r)) for r in front], "policy_comparison": comparison,
              "notes": list(notes)}
    atomic_write(os.path.join(out_dir, "sweep.json"), json.dumps(record, indent=1) + "\n")
    text = "".join(note + "\n" for note in notes) + format_table(rows, record["pareto_front"])
    if format_comparison(comparison):
        text += "\n\n" + format_comparison(comparison)
    atomic_write(os.path.join(out_dir, "sweep.txt"), text + "\n")
    record["text"] = text
    series = {p: [(r["gmacs"], r["top1"]) for r in rows if r["policy"] == p] for p in POLICIES}
    dense = next(((r["gmacs"], r["top1"]) for r in rows if r["policy"] == "dense"), None)
    tradeoff_figure(os.path.join(out_dir, "sweep.png"), series, dense=dense,
                    front=[(r["gmacs"], r["top1"]) for r in front], title=title)
    return record


def _setting_args(args, setting):
    run = argparse.Namespace(**vars(args))
    if setting.policy == "dense":
        run.r_tokens = 0
        return run
    run.r_tokens = list(setting.r_tokens) if isinstance(setting.r_tokens, tuple) else setting.r_tokens
    if setting.pp_loc_list is not None:
        run.pp_loc_list = list(setting.pp_loc_list)
    if setting.threshold is not None:
        run.eval_threshold = list(setting.threshold) if isinstance(setting.threshold, tuple) else setting.threshold
    return run


def _pooled_share(model, loader, batch_size, setting):
    """Share of images pooled per compression block: 0 / 1 by construction when a policy is forced, else
    one more pass over the data."""
    blocks = len(model.compression_blocks)
    if setting.policy == "dense":
        return ""
    if setting.policy in FORCED_THRESHOLD:
        return ",".join(["1" if setting.policy == "pool" else "0"] * blocks)
    decisions = collect_decisions(model, loader, batch_size=batch_size)
    return ",".join(f"{s:.4g}" for s in decisions.pooled.mean(axis=0))


def run_sweep(args, settings, out_dir, logger=None, speed_rounds=3, speed_repeats=5):
    """Evaluate every setting of ``settings``, as :func:`resolve_settings` relabels and dedupes them, that
    is not already in ``out_dir/sweep.csv`` with the weights of ``args.ckpt_path``, appending each row as it
    finishes. Returns ``(rows, notes)``: the rows of the resolved settings in their order, and the notes of
    :func:`resolve_settings` (also logged)."""
    csv_path = os.path.join(out_dir, "sweep.csv")
    weights = str(args.ckpt_path or "")
    if not os.path.isfile(weights):
        raise ConfigError(f"checkpoint not found: {weights!r} (pass the weights to sweep with --ckpt_path)")
    identity = {"model": f"{args.model}@{args.image_resize}px", "weights_sha256": file_digest(weights),
                "data": os.path.join(args.data_dir, args.val_split)}
    rows = read_rows(csv_path, identity)
    dense, _ = build_eval_model(_setting_args(args, Setting("dense")))
    settings, notes = resolve_settings(settings, dense)
    done = {_row_key(r) for r in rows}
    todo = [s for s in settings if s.key() not in done]
    if logger is not None:
        for note in notes:
            logger.info(note)
        logger.info("sweep of %s (weights %s) on %s/%s: %d settings, %d already in %s, %d to run", args.model,
                    weights, args.data_dir, args.val_split, len(settings), len(settings) - len(todo), csv_path,
                    len(todo))
    if todo:
        loader, _ = create_eval_loader(args)
        batches = loader.get_dataset_size()
        start = time.perf_counter()
        model, group = None, None
        for step, setting in enumerate(todo):
            if setting.policy == "dense":
                model, group = dense, None
            elif setting.model_group() != group:
                model, _ = build_eval_model(_setting_args(args, setting))
                group = setting.model_group()
            if setting.policy != "dense" and setting.threshold is not None:
                model.set_threshold(list(setting.threshold) if isinstance(setting.threshold, tuple)
                                    else setting.threshold)
            batch_progress = None
            if logger is not None:
                batch_progress = Progress(batches, logger, label=f"setting {step + 1}/{len(todo)} batch",
                                          log_interval=args.log_interval)
            metrics = evaluate(model, loader, batch_size=args.batch_size, progress=batch_progress)
            speeds = paired_throughput({"setting": model, "dense": dense}, batch_size=args.batch_size,
                                       image_size=args.image_resize, rounds=speed_rounds, repeats=speed_repeats)
            row = dict(zip(KEY_COLUMNS, setting.key()))
            row.update(gmacs=float(model_gmacs(model)), top1=metrics["top1"], top5=metrics["top5"],
                       loss=metrics["loss"], img_per_s=speeds["setting"], dense_img_per_s=speeds["dense"],
                       speedup=speeds["setting"] / speeds["dense"],
                       pooled_share=_pooled_share(model, loader, args.batch_size, setting),
                       tokens_per_block=",".join(str(n) for _, n in model.token_schedule),
                       num_samples=float(metrics["num_samples"]), ckpt_path=weights, **identity)
            rows.append(row)
            write_rows(csv_path, rows)
            if logger is not None:
                eta = (time.perf_counter() - start) / (step + 1) * (len(todo) - step - 1)
                logger.info("[%d/%d, eta %s] %s r=%s blocks=%s threshold=%s: top-1 %.2f%%, %.4f GMACs, %.0f img/s "
                            "(%.2fx dense)", step + 1, len(todo), format_eta(eta), *setting.key(), row["top1"],
                            row["gmacs"], row["img_per_s"], row["speedup"])
    wanted = {s.key() for s in settings}
    selected = [r for r in rows if _row_key(r) in wanted]
    order = {s.key(): i for i, s in enumerate(settings)}
    selected.sort(key=lambda r: order.get(_row_key(r), len(order)))
    return selected, notes
