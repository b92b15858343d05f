"""What PPT decides on a dataset (the paper's Figure 3): per compression block, the variance of every
image's significance scores and the policy it got, their statistics, and thresholds calibrated so that a
chosen share of the images is pooled.

Everything is read through :func:`mindppt.models.inspect_compression`, the same call ``tools/visualize.py``
uses, so the numbers are the ones the compiled graph compares with its threshold (float32).
"""
import csv
import io
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from mindppt.errors import ConfigError
from mindppt.io import atomic_write
from mindppt.logger import Progress
from mindppt.models import inspect_compression
from mindppt.plots import variance_figure

from .build import build_eval_model, create_eval_loader, describe_threshold
from .evaluate import pad_batch

__all__ = ["Decisions", "collect_decisions", "block_statistics", "threshold_for_share", "calibrate_thresholds",
           "normalise_shares", "run_analysis", "json_finite", "QUANTILES"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class Decisions:
    """Per image (rows, in loader order) and compression block (columns): score variance and policy."""
    blocks: list
    variance: np.ndarray  # (images, blocks) float32
    pooled: np.ndarray  # (images, blocks) bool
    labels: np.ndarray  # (images,)

    @property
    def num_images(self):
        return int(self.variance.shape[0])


def collect_decisions(model, loader, *, batch_size, max_images=None, progress=None):
    """Run ``model`` (eval mode) over ``loader`` (columns image, label) and gather what each compression
    block decided for each image: the first ``max_images`` images, or all."""
    model.set_train(False)
    blocks = list(model.compression_blocks)
    variances, pooled, labels = [], [], []
    count = 0
    for step, (images, batch_labels) in enumerate(loader.create_tuple_iterator(num_epochs=1, output_numpy=True)):
        take = images.shape[0] if max_images is None else min(images.shape[0], max_images - count)
        if take <= 0:
            break
        _, infos = inspect_compression(model, pad_batch(np.ascontiguousarray(images, np.float32), batch_size))
        variances.append(np.stack([info["variance"][:take] for info in infos], axis=1))
        pooled.append(np.stack([info["pooled"][:take] for info in infos], axis=1))
        labels.append(np.asarray(batch_labels)[:take])
        count += take
        if progress is not None:
            progress.update(step + 1, count)
    if not count:
        raise ConfigError("the dataset produced no images to analyse")
    return Decisions(blocks, np.concatenate(variances).astype(np.float32), np.concatenate(pooled).astype(bool),
                     np.concatenate(labels))


def block_statistics(decisions, thresholds):
    """One dict per compression block: threshold, images pooled and pruned (and the pooled share), mean,
    standard deviation, extremes and :data:`QUANTILES` of the variance."""
    out = []
    for j, block in enumerate(decisions.blocks):
        variance = decisions.variance[:, j].astype(np.float64)
        pooled = int(decisions.pooled[:, j].sum())
        entry = {"block": block, "threshold": float(thresholds[j]), "images": decisions.num_images,
                 "pooled": pooled, "pruned": decisions.num_images - pooled,
                 "pooled_share": pooled / decisions.num_images,
                 "mean": float(variance.mean()), "std": float(variance.std()),
                 "min": float(variance.min()), "max": float(variance.max())}
        entry.update({f"q{round(100 * q):02d}": float(np.quantile(variance, q)) for q in QUANTILES})
        out.append(entry)
    return out


def threshold_for_share(variance, share):
    """A threshold under which ``round(share * n)`` of the ``n`` variances fall (``variance < threshold``,
    compared in float32 as the graph does): the midpoint between the k-th and (k+1)-th smallest variance;
    0 ("always prune") for no image, inf ("always pool") for all. Tied variances can move the count by
    the number of ties."""
    values = np.sort(np.asarray(variance, np.float32).reshape(-1))
    k = int(round(float(share) * len(values)))
    if k <= 0:
        return 0.0
    if k >= len(values):
        return math.inf
    below, above = values[k - 1], values[k]
    threshold = np.float32((np.float64(below) + np.float64(above)) / 2)
    if threshold <= below:  # adjacent float32 values: the midpoint rounds onto the lower one
        threshold = np.nextafter(below, np.float32(np.inf))
    return float(threshold)


def normalise_shares(shares, blocks):
    """One target pooled share per compression block: one value for all, or one per block."""
    shares = [float(s) for s in shares]
    if len(shares) == 1:
        shares = shares * len(blocks)
    if len(shares) != len(blocks):
        raise ConfigError(f"--target_pool_ratio needs one value or one per compression block ({len(blocks)}: "
                          f"blocks {blocks}), got {len(shares)}: {shares}")
    bad = [s for s in shares if not 0.0 <= s <= 1.0]
    if bad:
        raise ConfigError(f"--target_pool_ratio values are shares of images in [0, 1], got {bad}")
    return shares


def calibrate_thresholds(model, shares, collect):
    """Per-block thresholds that pool ``shares[j]`` of the images in compression block ``j``.

    The variance in a block depends on the thresholds of the blocks before it (they decide which tokens
    reach it) and not on its own, so the blocks are calibrated in order, one pass of ``collect()`` (a
    function returning :class:`Decisions` for the model's current thresholds) each. The last pass has
    every earlier block at its final threshold, so its variances are those of the calibrated model and
    its policies follow from them. Leaves the model at the calibrated thresholds. Returns
    ``(thresholds, decisions)``."""
    thresholds = list(model.thresholds)
    decisions = None
    for j in range(len(thresholds)):
        model.set_threshold(thresholds)
        decisions = collect()
        thresholds[j] = threshold_for_share(decisions.variance[:, j], shares[j])
    model.set_threshold(thresholds)
    pooled = decisions.variance < np.asarray(thresholds, np.float32)
    return thresholds, Decisions(decisions.blocks, decisions.variance, pooled, decisions.labels)


def _per_image_csv(decisions):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    columns = [f"{kind}_block{b}" for b in decisions.blocks for kind in ("variance", "policy")]
    writer.writerow(["image", "label"] + columns)
    for i in range(decisions.num_images):
        cells = [i, int(decisions.labels[i])]
        for j in range(len(decisions.blocks)):
            cells += [f"{decisions.variance[i, j]:.9g}", "pool" if decisions.pooled[i, j] else "prune"]
        writer.writerow(cells)
    return text.getvalue()


def _blocks_csv(stats):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(stats[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(stats)
    return text.getvalue()


def _figure_blocks(decisions, thresholds):
    return [{"block": b, "variance": decisions.variance[:, j], "pooled": decisions.pooled[:, j],
             "threshold": thresholds[j]} for j, b in enumerate(decisions.blocks)]


def _write_run(out_dir, name, decisions, thresholds, title):
    """``name``.json / _blocks.csv / _images.csv / .png for one set of thresholds; returns the statistics."""
    stats = block_statistics(decisions, thresholds)
    record = {"thresholds": thresholds, "blocks": stats,
              "per_image": {"labels": decisions.labels.tolist(),
                            "variance": {str(b): decisions.variance[:, j].tolist()
                                         for j, b in enumerate(decisions.blocks)},
                            "pooled": {str(b): decisions.pooled[:, j].tolist()
                                       for j, b in enumerate(decisions.blocks)}}}
    atomic_write(os.path.join(out_dir, f"{name}.json"), json.dumps(json_finite(record), indent=1) + "\n")
    atomic_write(os.path.join(out_dir, f"{name}_blocks.csv"), _blocks_csv(stats))
    atomic_write(os.path.join(out_dir, f"{name}_images.csv"), _per_image_csv(decisions))
    variance_figure(os.path.join(out_dir, f"{name}.png"), _figure_blocks(decisions, thresholds), title=title)
    return stats


def json_finite(value):
    """``value`` (nested dicts and lists) for JSON, which has no inf: an always-pool threshold is written as
    the string "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_finite(v) for v in value]
    return value


def _yaml_number(value):
    return ".inf" if math.isinf(value) else f"{value:.9g}"


def yaml_snippet(thresholds, shares):
    """Config lines that apply ``thresholds``, with a comment saying what they were calibrated for."""
    value = (_yaml_number(thresholds[0]) if len(set(thresholds)) == 1
             else "[" + ", ".join(_yaml_number(t) for t in thresholds) + "]")
    return (f"# pools {', '.join(f'{s:g}' for s in shares)} of the images in the compression blocks on the "
            f"analysed data (tools/analyze.py)\neval_threshold: {value}\n")


def run_analysis(args, out_dir, *, max_images=None, target_shares=None, logger=None):
    """The analysis of ``tools/analyze.py``: the model of ``args`` at its evaluation threshold over
    ``data_dir/val_split`` (the first ``max_images`` images), then, with ``target_shares``, thresholds
    calibrated to pool those shares. Writes into ``out_dir``: ``variance.{json,png}``,
    ``variance_blocks.csv``, ``variance_images.csv`` and, when calibrating, the same files as
    ``calibrated.*`` plus ``calibrated_threshold.yaml``. Returns a summary dict."""
    model, info = build_eval_model(args)
    if not model.compression_blocks:
        raise ConfigError(f"model {args.model} compresses no tokens (r_tokens={args.r_tokens}): nothing to analyse; "
                          f"set r_tokens and pp_loc_list")
    shares = normalise_shares(target_shares, model.compression_blocks) if target_shares else None
    loader, num_samples = create_eval_loader(args)
    images = num_samples if max_images is None else min(max_images, num_samples)
    batches = math.ceil(images / args.batch_size)
    passes = 1 + (len(model.compression_blocks) if shares else 0)
    if logger is not None:
        logger.info("analysing %s (tokens after each block %s, threshold %s) with the weights of %s on %d images "
                    "of %s/%s: %d pass(es)", args.model, [n for _, n in info["token_schedule"]],
                    describe_threshold(info["threshold"]), info["ckpt_path"], images, args.data_dir,
                    args.val_split, passes)
    done = [0]

    def collect():
        done[0] += 1
        progress = None
        if logger is not None:
            progress = Progress(batches, logger, label=f"pass {done[0]}/{passes} batch",
                                log_interval=args.log_interval)
        return collect_decisions(model, loader, batch_size=args.batch_size, max_images=max_images,
                                 progress=progress)

    configured = list(model.thresholds)
    decisions = collect()
    title = (f"{args.model} at {args.image_resize}px: score variance per compression block "
             f"({decisions.num_images} images)")
    summary = {"model": args.model, "ckpt_path": info["ckpt_path"], "data": os.path.join(args.data_dir, args.val_split),
               "images": decisions.num_images, "token_schedule": info["token_schedule"],
               "configured": {"thresholds": configured,
                              "blocks": _write_run(out_dir, "variance", decisions, configured, title)}}
    if shares:
        thresholds, calibrated = calibrate_thresholds(model, shares, collect)
        stats = _write_run(out_dir, "calibrated", calibrated, thresholds,
                           title + f", thresholds for pooled shares {', '.join(f'{s:g}' for s in shares)}")
        snippet = yaml_snippet(thresholds, shares)
        atomic_write(os.path.join(out_dir, "calibrated_threshold.yaml"), snippet)
        summary["calibrated"] = {"target_shares": shares, "thresholds": thresholds, "blocks": stats,
                                 "yaml": snippet}
    atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(json_finite(summary), indent=1) + "\n")
    return summary
