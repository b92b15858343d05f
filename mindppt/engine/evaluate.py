"""Evaluation: top-1 / top-5 / loss over a loader, forward throughput, and the metrics table.

The model runs in graph mode on fixed-shape batches: a last partial batch is padded to the full batch
size (the padded rows are dropped from the results; every image is processed independently, PPT
included), so one compiled graph serves the whole set. Top-k and the loss are computed on the host in
float64 from the logits.
"""
import math
import time

import mindspore as ms
import numpy as np

from mindppt.logger import Progress

from .build import build_eval_model, create_eval_loader, describe_threshold

__all__ = ["evaluate", "pad_batch", "format_metrics_table", "run_eval", "METRIC_KEYS"]

METRIC_KEYS = ("top1", "top5", "loss", "gmacs", "params_m", "img_per_s", "num_samples")


def pad_batch(images, batch_size):
    """``images`` with zero images appended up to ``batch_size`` (one compiled graph for every batch)."""
    b = images.shape[0]
    if b >= batch_size:
        return images
    pad = np.zeros((batch_size - b,) + images.shape[1:], dtype=images.dtype)
    return np.concatenate([images, pad], axis=0)


def _batch_stats(logits, labels):
    """(top-1 hits, top-5 hits, summed cross-entropy) of one batch, float64 on the host."""
    logits = logits.astype(np.float64)
    labels = labels.astype(np.int64).reshape(-1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_prob[np.arange(len(labels)), labels].sum()
    k = min(5, logits.shape[1])
    # rank of the true class: number of classes with a strictly higher logit
    true = logits[np.arange(len(labels)), labels][:, None]
    rank = (logits > true).sum(axis=1)
    return int((rank < 1).sum()), int((rank < k).sum()), float(loss)


def evaluate(model, loader, *, batch_size, all_reduce=None, progress=None):
    """Run ``model`` (eval mode) over ``loader`` (columns image float32 NCHW, label int32).

    ``all_reduce``: optional function summing a float64 numpy vector over devices (data-parallel
    validation on sharded data). Returns ``{"top1", "top5" (percent), "loss", "num_samples",
    "img_per_s", "eval_time_s"}``; img/s is the forward pass alone (host-to-device copy and the
    device sync included, data loading excluded) over every batch but the first, which includes graph
    compilation. ``progress``: optional :class:`mindppt.logger.Progress` updated after each batch.
    """
    model.set_train(False)
    hits1 = hits5 = 0
    loss_sum = 0.0
    count = 0
    timed_images, timed_seconds = 0, 0.0
    first = None
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader.create_tuple_iterator(num_epochs=1, output_numpy=True)):
        b = images.shape[0]
        batch = ms.Tensor(pad_batch(np.ascontiguousarray(images, dtype=np.float32), batch_size))
        t0 = time.perf_counter()
        logits = model(batch).asnumpy()[:b]
        dt = time.perf_counter() - t0
        if i == 0:
            first = batch
        else:
            timed_images += b
            timed_seconds += dt
        h1, h5, loss = _batch_stats(logits, labels)
        hits1, hits5, loss_sum, count = hits1 + h1, hits5 + h5, loss_sum + loss, count + b
        if progress is not None:
            progress.update(i + 1, count)
    if first is not None and timed_images == 0:  # a single batch: time it once more, compiled
        t0 = time.perf_counter()
        model(first).asnumpy()
        timed_seconds, timed_images = time.perf_counter() - t0, first.shape[0]
    elapsed = time.perf_counter() - start
    totals = np.array([hits1, hits5, loss_sum, count], dtype=np.float64)
    if all_reduce is not None:
        totals = all_reduce(totals)
    hits1, hits5, loss_sum, count = totals.tolist()
    if count == 0:
        raise ValueError("evaluation loader produced no samples")
    return {
        "top1": 100.0 * hits1 / count,
        "top5": 100.0 * hits5 / count,
        "loss": loss_sum / count,
        "num_samples": int(round(count)),
        "img_per_s": timed_images / timed_seconds if timed_seconds > 0 else float("nan"),
        "eval_time_s": elapsed,
    }


def _fmt(value, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def format_metrics_table(rows, columns=None):
    """A plain-text table: ``rows`` is ``[(name, metrics dict), ...]``."""
    columns = columns or [("top1", "top-1 %", 2), ("top5", "top-5 %", 2), ("loss", "loss", 4),
                          ("gmacs", "GMACs", 4), ("params_m", "params (M)", 3), ("img_per_s", "img/s", 1),
                          ("num_samples", "samples", 0)]
    header = ["model"] + [title for _, title, _ in columns]
    body = [[name] + [_fmt(m.get(key), digits) for key, _, digits in columns] for name, m in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in body])


def run_eval(args, logger=None):
    """Evaluate ``args.model`` with the weights of ``args.ckpt_path`` on
    ``data_dir/val_split`` at the evaluation threshold. Returns ``(metrics, model)``: the metrics of
    :data:`METRIC_KEYS` plus ``model``, ``ckpt_path``, ``threshold`` and ``tokens_per_block``, and the
    evaluated model (compiled, for further measurements)."""
    model, info = build_eval_model(args)
    loader, num_samples = create_eval_loader(args)
    progress = None
    if logger is not None:
        compression = "dense" if info["threshold"] is None else f"PPT threshold {describe_threshold(info['threshold'])}"
        logger.info("evaluating %s (%s, tokens after each block %s) with the %sweights of %s on %d images of "
                    "%s/%s, %s mode on %s", args.model, compression, [n for _, n in info["token_schedule"]],
                    "EMA " if args.ema else "", info["ckpt_path"], num_samples, args.data_dir, args.val_split,
                    args.mode, args.device_target)
        progress = Progress(loader.get_dataset_size(), logger, label="eval batch", log_interval=args.log_interval)
    metrics = evaluate(model, loader, batch_size=args.batch_size, progress=progress)
    metrics.update({"gmacs": info["gmacs"], "params_m": info["params_m"], "model": args.model,
                    "ckpt_path": info["ckpt_path"], "threshold": info["threshold"],
                    "tokens_per_block": [n_out for _, n_out in info["token_schedule"]]})
    return metrics, model
