"""Figures of PPT's choices as PNG files, in the style of the paper: the score variance of every image per
compression block (Figure 3) and accuracy against GMACs (Figure 4). Plain numbers in, a file out: nothing
here knows a model. matplotlib draws off-screen (Agg canvas, no pyplot state, no display needed).

Each function returns the ``matplotlib.figure.Figure`` it saved, so callers and tests can inspect what was
drawn; the PNG is ``size * DPI`` pixels exactly (no tight bounding box).
"""
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mindppt.io import atomic_output

__all__ = ["DPI", "VARIANCE_PANEL", "TRADEOFF_SIZE", "TUNING_SIZE", "POLICY_COLOURS", "REPORT_MARKERS",
           "variance_figure", "tradeoff_figure", "tuning_figure", "variance_pixels"]

DPI = 100
VARIANCE_PANEL = (4.2, 3.0)  # inches per block and row (scatter, histogram)
TRADEOFF_SIZE = (7.0, 5.0)
TUNING_SIZE = (12.0, 5.0)
POLICY_COLOURS = {"pool": "tab:blue", "prune": "tab:red", "adaptive": "tab:green", "dense": "black"}
# tuning_figure: (marker, size, colour) of each reported setting
REPORT_MARKERS = {"chosen": ("o", 160, "gold"), "dense": ("*", 220, "black"), "paper default": ("D", 70, "tab:purple"),
                  "pool-only": ("s", 50, "tab:blue"), "prune-only": ("s", 50, "tab:red")}


def variance_pixels(num_blocks):
    """(width, height) of :func:`variance_figure`'s PNG for ``num_blocks`` blocks."""
    return round(VARIANCE_PANEL[0] * num_blocks * DPI), round(VARIANCE_PANEL[1] * 2 * DPI)


def _save(fig, path):
    FigureCanvasAgg(fig)
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return fig


def _log_scale(values):
    """Variances spanning more than two decades read better on a log axis (all must be > 0)."""
    positive = values[values > 0]
    return len(positive) == len(values) and len(values) > 1 and positive.max() / positive.min() > 100


def _drawable(threshold):
    """0 (always prune) and inf (always pool) have no line."""
    return threshold is not None and math.isfinite(threshold) and threshold > 0


def variance_figure(path, blocks, title=None):
    """One column per compression block: each image's score variance against its index, coloured by the
    policy it got (top), and their histogram (bottom), the threshold drawn as a line and the mean variance
    in the column title. ``blocks``: dicts with ``block``, ``variance`` (n,), ``pooled`` (n,) and
    ``threshold``."""
    fig = Figure(figsize=(VARIANCE_PANEL[0] * len(blocks), VARIANCE_PANEL[1] * 2), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, len(blocks), squeeze=False)
    for column, entry in enumerate(blocks):
        variance = np.asarray(entry["variance"], np.float64).reshape(-1)
        pooled = np.asarray(entry["pooled"], bool).reshape(-1)
        threshold = entry.get("threshold")
        scatter, histogram = axes[0, column], axes[1, column]
        log = _log_scale(variance)
        index = np.arange(len(variance))
        for mask, policy in ((~pooled, "prune"), (pooled, "pool")):
            scatter.scatter(index[mask], variance[mask], s=7, color=POLICY_COLOURS[policy], alpha=0.7,
                            linewidths=0, label=f"{policy} {int(mask.sum())} ({100 * mask.mean():.0f}%)")
        if len(variance) > 1:
            lo, hi = variance.min(), variance.max()
            bins = np.geomspace(lo, hi, 40) if log else np.linspace(lo, hi if hi > lo else lo + 1e-12, 40)
        else:
            bins = 10
        histogram.hist([variance[pooled], variance[~pooled]], bins=bins, stacked=True,
                       color=[POLICY_COLOURS["pool"], POLICY_COLOURS["prune"]], label=["pool", "prune"])
        if log:
            scatter.set_yscale("log")
            histogram.set_xscale("log")
        if _drawable(threshold):
            scatter.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.2g}")
            histogram.axvline(threshold, color="black", linestyle="--", linewidth=1)
        mean = float(variance.mean()) if len(variance) else float("nan")
        scatter.set_title(f"block {entry['block']}: mean variance {mean:.2e}", fontsize=10)
        scatter.set_xlabel("image")
        scatter.set_ylabel("variance of significance scores")
        scatter.legend(fontsize=8, loc="upper right")
        histogram.set_xlabel("variance")
        histogram.set_ylabel("images")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def tradeoff_figure(path, series, dense=None, front=(), title=None, x_label="GMACs", y_label="top-1 %"):
    """Accuracy against cost. ``series``: ``{name: [(gmacs, top1), ...]}`` (every point is drawn; a line
    joins the best point of each distinct cost, so several thresholds at one cost show as a column of
    points under the line); ``dense``: ``(gmacs, top1)`` drawn as a star; ``front``: the Pareto-optimal
    points, ringed and joined by a dotted step line."""
    fig = Figure(figsize=TRADEOFF_SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for name, points in series.items():
        points = np.asarray(points, np.float64).reshape(-1, 2)
        if not len(points):
            continue
        colour = POLICY_COLOURS.get(name)
        ax.scatter(points[:, 0], points[:, 1], s=22, color=colour, alpha=0.6, linewidths=0)
        costs = np.unique(points[:, 0])
        best = [points[points[:, 0] == c, 1].max() for c in costs]
        ax.plot(costs, best, marker="o", markersize=4, color=colour, label=name)
    if dense is not None:
        ax.scatter([dense[0]], [dense[1]], marker="*", s=220, color=POLICY_COLOURS["dense"], zorder=5,
                   label=f"dense ({dense[1]:.2f}%)")
    front = np.asarray(front, np.float64).reshape(-1, 2)
    if len(front):
        front = front[np.argsort(front[:, 0])]
        ax.scatter(front[:, 0], front[:, 1], s=110, facecolors="none", edgecolors="black", linewidths=1.2,
                   zorder=4, label="Pareto front")
        ax.step(front[:, 0], front[:, 1], where="post", color="black", linestyle=":", linewidth=1)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path)


def tuning_figure(path, evaluated, reported, target=None, title=None):
    """The search of tools/tune.py: top-1 against GMACs on the calibration images (left: ``evaluated``,
    ``{policy: [(gmacs, top1), ...]}``, every setting the search evaluated, and the reported settings) and
    on the held-out images (right: the reported settings). ``reported``: dicts with ``name`` (a key of
    :data:`REPORT_MARKERS`), ``gmacs``, ``calibration_top1`` and ``heldout_top1``; ``target``: GMACs drawn
    as a dashed line."""
    fig = Figure(figsize=TUNING_SIZE, dpi=DPI, layout="constrained")
    search, heldout = fig.subplots(1, 2, sharex=True)
    for policy, points in evaluated.items():
        points = np.asarray(points, np.float64).reshape(-1, 2)
        if len(points):
            search.scatter(points[:, 0], points[:, 1], s=18, color=POLICY_COLOURS.get(policy), alpha=0.6,
                           linewidths=0, label=f"{policy} ({len(points)})")
    for ax, key in ((search, "calibration_top1"), (heldout, "heldout_top1")):
        for row in reported:
            marker, size, colour = REPORT_MARKERS[row["name"]]
            hollow = row["name"] == "chosen"
            ax.scatter([row["gmacs"]], [row[key]], marker=marker, s=size, zorder=6 if hollow else 5, linewidths=1.8,
                       facecolors="none" if hollow else colour, edgecolors=colour,
                       label=f"{row['name']} ({row[key]:.2f}%)")
        if target is not None:
            ax.axvline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.4g} GMACs")
        ax.set_xlabel("GMACs")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    search.set_title("search: every evaluated setting, calibration images", fontsize=10)
    heldout.set_title("report: held-out images", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)
