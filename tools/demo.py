"""``make demo``: dense ViT vs the same ViT with PPT on real handwritten digits, one recipe, GRAPH_MODE.

1. writes scikit-learn's digits (1797 real 8x8 scans, fixed stratified split) as an ImageFolder in
   outputs/demo/digits;
2. trains ``vit_digits_patch4_16`` (dense: the recipe with ``--model vit_digits_patch4_16 --r_tokens 0``)
   and ``ppt_vit_digits_patch4_16`` with configs/demo_digits.yaml;
3. evaluates both final checkpoints (top-1/top-5/loss on the 450 validation digits, GMACs from the token
   schedule), measures forward img/s of the two models alternately in this process (so machine load hits
   both alike), and counts how often PPT pooled vs pruned in each compression block;
4. prints the comparison and writes outputs/demo/summary.json as {"dense": {...}, "ppt": {...}}.

Extra ``--key value`` arguments go to both trainings (e.g. ``--epoch_size 3`` for a quick look); the
options the demo sets itself (model, r_tokens, output_dir, weights) are refused.
"""
import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("GLOG_v", "3")  # MindSpore logs errors only, unless GLOG_v is set (mindppt/engine/cli.py)

from mindppt.data import write_digits_imagefolder  # noqa: E402
from mindppt.engine.build import create_eval_loader, describe_threshold  # noqa: E402
from mindppt.engine.cli import parse_cli, run_tool  # noqa: E402
from mindppt.engine.evaluate import run_eval  # noqa: E402
from mindppt.engine.timing import paired_throughput  # noqa: E402
from mindppt.engine.trainer import train  # noqa: E402
from mindppt.io import atomic_write  # noqa: E402
from mindppt.models import inspect_compression  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo_digits.yaml")
OUT = os.path.join(ROOT, "outputs", "demo")
DENSE_MODEL = "vit_digits_patch4_16"
TARGET_TOP1, TARGET_GAP, TARGET_GMACS_RATIO, TARGET_MINUTES = 85.0, 1.5, 0.7, 10.0


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


def main(argv=None):
    start = time.perf_counter()
    extra = list(sys.argv[1:] if argv is None else argv)
    ppt_args = parse_cli(["-c", CONFIG] + extra, tool="demo", description=__doc__)
    ppt_args.data_dir = os.path.join(ROOT, ppt_args.data_dir)  # the recipe's paths are relative to the repository
    ppt_args.ckpt_save_dir = os.path.join(OUT, "ppt")
    dense_args = argparse.Namespace(**vars(ppt_args))
    dense_args.ckpt_save_dir, dense_args.model, dense_args.r_tokens = os.path.join(OUT, "dense"), DENSE_MODEL, 0

    counts = write_digits_imagefolder(ppt_args.data_dir)
    print(f"digits ImageFolder in {ppt_args.data_dir}: {counts['train']} train / {counts['val']} val images")

    runs = {}
    for name, args in (("dense", dense_args), ("ppt", ppt_args)):
        if os.path.isdir(args.ckpt_save_dir):
            shutil.rmtree(args.ckpt_save_dir)  # a fresh run (the demo owns these folders)
        print(f"\n=== training {name}: {args.model} ({args.epoch_size} epochs) ===", flush=True)
        t0 = time.perf_counter()
        summary = train(args)
        runs[name] = {"args": args, "summary": summary, "train_s": time.perf_counter() - t0}

    results, models = {}, {}
    for name, run in runs.items():
        args = run["args"]
        args.ckpt_path = run["summary"]["last_ckpt"]  # the final weights (no selection on the val set)
        metrics, model = run_eval(args)
        metrics.update({"ckpt_path": os.path.relpath(metrics["ckpt_path"], ROOT),
                        "train_time_s": round(run["train_s"], 1), "epochs": args.epoch_size,
                        "best_val_top1_during_training": run["summary"]["best_top1"]})
        if name == "ppt":
            loader, _ = create_eval_loader(args)
            metrics["policy"] = policy_counts(model, loader, model.compression_blocks)
        results[name], models[name] = metrics, model

    batch = runs["ppt"]["args"].batch_size
    speeds = paired_throughput(models, batch_size=batch, image_size=runs["ppt"]["args"].image_resize)
    for name in results:
        results[name]["eval_loop_img_per_s"] = results[name]["img_per_s"]
        results[name]["img_per_s"] = speeds[name]

    dense, ppt = results["dense"], results["ppt"]
    ratio = ppt["gmacs"] / dense["gmacs"]
    gap = dense["top1"] - ppt["top1"]
    elapsed = time.perf_counter() - start
    print("\n=== digits demo: dense ViT vs PPT (same recipe, final weights, 450 validation digits) ===")
    rows = [("dense " + dense["model"], dense, 1.0, 1.0), ("PPT   " + ppt["model"], ppt, ratio,
                                                            ppt["img_per_s"] / dense["img_per_s"])]
    print(f"{'model':36s} {'top-1 %':>8s} {'GMACs':>8s} {'x dense':>8s} {'img/s':>8s} {'x dense':>8s}")
    for label, m, r, s in rows:
        print(f"{label:36s} {m['top1']:8.2f} {m['gmacs']:8.4f} {r:8.2f} {m['img_per_s']:8.1f} {s:8.2f}")
    print(f"(img/s: forward pass, batch {batch}, median of rounds measured alternately in one process)")
    print(f"tokens after each block: dense {dense['tokens_per_block']}, PPT {ppt['tokens_per_block']}")
    policy = ", ".join(f"{b}: {v['pooled']} pooled / {v['pruned']} pruned" for b, v in ppt["policy"].items())
    print(f"PPT policy on the validation images (threshold {describe_threshold(ppt['threshold'])}): {policy}")

    checks = [
        (f"dense top-1 >= {TARGET_TOP1:g}%", dense["top1"] >= TARGET_TOP1, f"{dense['top1']:.2f}%"),
        (f"PPT within {TARGET_GAP:g} points of dense", gap <= TARGET_GAP, f"{gap:+.2f} points"),
        (f"PPT GMACs <= {TARGET_GMACS_RATIO:g}x dense", ratio <= TARGET_GMACS_RATIO, f"{ratio:.3f}x"),
        (f"demo under {TARGET_MINUTES:g} minutes", elapsed <= TARGET_MINUTES * 60, f"{elapsed / 60:.1f} min"),
    ]
    for text, ok, value in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}: {value}")

    summary = {"dense": dense, "ppt": ppt,
               "comparison": {"gmacs_ratio": ratio, "top1_gap": gap,
                              "speedup": ppt["img_per_s"] / dense["img_per_s"],
                              "targets_met": all(ok for _, ok, _ in checks), "demo_time_s": round(elapsed, 1)}}
    path = atomic_write(os.path.join(OUT, "summary.json"), json.dumps(summary, indent=2) + "\n")
    print(f"summary written to {os.path.relpath(path, ROOT)}; demo took {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
