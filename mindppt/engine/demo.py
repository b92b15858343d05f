"""The digits demo (``make demo``): a dense ViT against the same ViT with PPT, trained from scratch by one
recipe on real handwritten digits, then compared on accuracy, GMACs, speed and PPT's policy choices.

:func:`run_demo` writes scikit-learn's digits as an ImageFolder, trains the dense model (the recipe with
``model = DENSE_MODEL`` and ``r_tokens = 0``) and the recipe's PPT model into their own folders, evaluates
both final checkpoints, measures their forward img/s alternately in this process (machine load hits both
alike), counts pooled and pruned images per compression block, checks the demo's targets and writes
``summary.json``.
"""
import argparse
import json
import os
import shutil
import time

from mindppt.data.digits import write_digits_imagefolder
from mindppt.io import atomic_write
from mindppt.models import inspect_compression

from .build import create_eval_loader, describe_threshold
from .evaluate import run_eval
from .timing import paired_throughput
from .trainer import train

__all__ = ["DENSE_MODEL", "TARGETS", "run_demo", "policy_counts", "format_report"]

DENSE_MODEL = "vit_digits_patch4_16"
# dense top-1 (%), PPT's largest top-1 gap (points), PPT's GMACs against dense, the whole demo (minutes)
TARGETS = {"top1": 85.0, "gap": 1.5, "gmacs_ratio": 0.7, "minutes": 10.0}


def policy_counts(model, loader, block_names):
    """Per compression block: how many validation images were pooled and how many pruned."""
    pooled = {b: 0 for b in block_names}
    total = 0
    for images, _ in loader.create_tuple_iterator(num_epochs=1, output_numpy=True):
        _, infos = inspect_compression(model, images)
        for info in infos:
            pooled[info["block"]] += int(info["pooled"].sum())
        total += images.shape[0]
    return {f"block_{b}": {"pooled": pooled[b], "pruned": total - pooled[b]} for b in block_names}


def run_demo(args, out_dir, progress=print):
    """Train and compare the dense and PPT models of the recipe ``args`` (a :func:`mindppt.engine.cli.parse_cli`
    namespace of tool "demo"; its ``data_dir`` receives the digits) into ``out_dir``. ``progress`` gets a
    line at each stage. Returns the summary written to ``out_dir/summary.json``."""
    start = time.perf_counter()
    ppt_args = argparse.Namespace(**vars(args))
    ppt_args.ckpt_save_dir = os.path.join(out_dir, "ppt")
    dense_args = argparse.Namespace(**vars(args))
    dense_args.ckpt_save_dir, dense_args.model, dense_args.r_tokens = os.path.join(out_dir, "dense"), DENSE_MODEL, 0

    counts = write_digits_imagefolder(args.data_dir)
    progress(f"digits ImageFolder in {args.data_dir}: {counts['train']} train / {counts['val']} val images")
    runs = {}
    for name, run_args in (("dense", dense_args), ("ppt", ppt_args)):
        if os.path.isdir(run_args.ckpt_save_dir):
            shutil.rmtree(run_args.ckpt_save_dir)  # a fresh run (the demo owns these folders)
        progress(f"\n=== training {name}: {run_args.model} ({run_args.epoch_size} epochs) ===")
        t0 = time.perf_counter()
        summary = train(run_args)
        runs[name] = {"args": run_args, "summary": summary, "train_s": time.perf_counter() - t0}

    results, models = {}, {}
    for name, run in runs.items():
        run_args = run["args"]
        run_args.ckpt_path = run["summary"]["last_ckpt"]  # the final weights (no selection on the val set)
        metrics, model = run_eval(run_args)
        metrics.update({"train_time_s": round(run["train_s"], 1), "epochs": run_args.epoch_size,
                        "best_val_top1_during_training": run["summary"]["best_top1"]})
        if name == "ppt":
            loader, _ = create_eval_loader(run_args)
            metrics["policy"] = policy_counts(model, loader, model.compression_blocks)
        results[name], models[name] = metrics, model

    speeds = paired_throughput(models, batch_size=args.batch_size, image_size=args.image_resize)
    for name in results:
        results[name]["eval_loop_img_per_s"] = results[name]["img_per_s"]
        results[name]["img_per_s"] = speeds[name]
    dense, ppt = results["dense"], results["ppt"]
    ratio, gap = ppt["gmacs"] / dense["gmacs"], dense["top1"] - ppt["top1"]
    elapsed = time.perf_counter() - start
    checks = [
        (f"dense top-1 >= {TARGETS['top1']:g}%", dense["top1"] >= TARGETS["top1"], f"{dense['top1']:.2f}%"),
        (f"PPT within {TARGETS['gap']:g} points of dense", gap <= TARGETS["gap"], f"{gap:+.2f} points"),
        (f"PPT GMACs <= {TARGETS['gmacs_ratio']:g}x dense", ratio <= TARGETS["gmacs_ratio"], f"{ratio:.3f}x"),
        (f"demo under {TARGETS['minutes']:g} minutes", elapsed <= TARGETS["minutes"] * 60, f"{elapsed / 60:.1f} min"),
    ]
    summary = {"dense": dense, "ppt": ppt,
               "comparison": {"gmacs_ratio": ratio, "top1_gap": gap, "speedup": ppt["img_per_s"] / dense["img_per_s"],
                              "batch_size": args.batch_size, "checks": [list(c) for c in checks],
                              "targets_met": all(ok for _, ok, _ in checks), "demo_time_s": round(elapsed, 1)}}
    atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def format_report(summary):
    """The demo's comparison table, policy counts and target checks as text."""
    dense, ppt, comparison = summary["dense"], summary["ppt"], summary["comparison"]
    lines = ["=== digits demo: dense ViT vs PPT (same recipe, final weights, validation digits) ===",
             f"{'model':36s} {'top-1 %':>8s} {'GMACs':>8s} {'x dense':>8s} {'img/s':>8s} {'x dense':>8s}"]
    for label, m, ratio, speed in (("dense " + dense["model"], dense, 1.0, 1.0),
                                   ("PPT   " + ppt["model"], ppt, comparison["gmacs_ratio"], comparison["speedup"])):
        lines.append(f"{label:36s} {m['top1']:8.2f} {m['gmacs']:8.4f} {ratio:8.2f} {m['img_per_s']:8.1f} "
                     f"{speed:8.2f}")
    lines.append(f"(img/s: forward pass, batch {comparison['batch_size']}, median of rounds measured alternately "
                 "in one process)")
    lines.append(f"tokens after each block: dense {dense['tokens_per_block']}, PPT {ppt['tokens_per_block']}")
    policy = ", ".join(f"{b}: {v['pooled']} pooled / {v['pruned']} pruned" for b, v in ppt["policy"].items())
    lines.append(f"PPT policy on the validation images (threshold {describe_threshold(ppt['threshold'])}): {policy}")
    lines += [f"  [{'ok' if ok else 'MISSED'}] {text}: {value}" for text, ok, value in comparison["checks"]]
    return "\n".join(lines)
