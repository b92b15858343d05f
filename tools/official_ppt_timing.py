"""Time the official PyTorch PPT (xjwu1024/PPT) on this machine: one model, one mode, one process.

Runs under a separate Python with torch, torchvision and timm==0.4.12 (never mindppt's environment) and
imports the official code from a checkout of its repository; nothing of that code is copied here.
Prints one JSON line: img/s (median of the timed calls), the calls' times and the process's peak
resident memory (:func:`mindppt.process_memory.process_peak_mb`, which imports no MindSpore: mindppt is
imported from this checkout, not installed in that Python). The timing stays here, not in the package:
every import of mindppt must be one of its runtime dependencies, and torch, timm and the official code are
not. :func:`mindppt.engine.benchmark.measure_official` starts it alternately with mindppt's own
measurement (docs/performance.md).

  /path/to/torch-venv/bin/python tools/official_ppt_timing.py --repo PPT --model deit_small_patch16_224 \
      --ppt --batch_size 32 [--train [--loss_scale dynamic --init_scale 1024] [--clip_grad 1.0] \
      [--model_ema_decay 0.99996]]

The training step is the inner step of the official engine.py (DeiT's): timm's NativeScaler called with the
clipping bound and the parameters, then the ModelEma update. NativeScaler's CUDA GradScaler does nothing on a
CPU, so its scaler is swapped for torch's CPU GradScaler (the same dynamic scaling: x2 after 2000 clean steps,
x0.5 on overflow), enabled with --loss_scale dynamic.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mindppt.process_memory import process_peak_mb  # noqa: E402  (this checkout's mindppt)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="checkout of the official PPT repository")
    parser.add_argument("--model", default="deit_small_patch16_224", help="timm 0.4.12 model name")
    parser.add_argument("--ppt", action="store_true", help="apply PPT (else the dense model)")
    parser.add_argument("--r_tokens", type=int, default=50)
    parser.add_argument("--pp_loc_list", type=int, nargs="+", default=[3, 6, 9])
    parser.add_argument("--threshold", type=float, default=7e-5)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--train", action="store_true", help="time a training step instead of inference")
    parser.add_argument("--drop_path_rate", type=float, default=0.1)
    parser.add_argument("--loss_scale", choices=("none", "dynamic"), default="none",
                        help="loss scaling of the training step")
    parser.add_argument("--init_scale", type=float, default=1024.0, help="first dynamic loss scale")
    parser.add_argument("--clip_grad", type=float, default=0.0, help="global-norm clipping bound (0: none)")
    parser.add_argument("--model_ema_decay", type=float, default=0.0, help="EMA of the weights (0: none)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="after timing, profile two more calls and print the K costliest op types (ms per call)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, args.repo)
    import timm  # noqa: PLC0415  (from the timing venv, after the repository is on the path)
    import torch  # noqa: PLC0415
    from ppt_deit import apply_patch  # noqa: PLC0415  (the official repository's module)
    from timm.loss import SoftTargetCrossEntropy  # noqa: PLC0415
    from timm.utils import ModelEma, NativeScaler  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = {"drop_path_rate": args.drop_path_rate if args.train else 0.0}
    if args.image_size:
        kwargs["img_size"] = args.image_size
    model = timm.create_model(args.model, pretrained=False, num_classes=1000, **kwargs)
    if args.ppt:
        apply_patch(model, prop_attn=True, pp_loc_list=args.pp_loc_list, threshold=args.threshold)
        model.r = args.r_tokens
    size = args.image_size or model.default_cfg["input_size"][-1]
    images = torch.rand(args.batch_size, 3, size, size)
    if args.train:
        model.train()
        criterion = SoftTargetCrossEntropy()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        labels = torch.randint(0, 1000, (args.batch_size,))
        targets = torch.full((args.batch_size, 1000), 0.1 / 1000).scatter_(1, labels[:, None], 0.9 + 0.1 / 1000)
        loss_scaler = NativeScaler()
        loss_scaler._scaler = torch.amp.GradScaler("cpu", init_scale=args.init_scale,
                                                   enabled=args.loss_scale == "dynamic")
        model_ema = ModelEma(model, decay=args.model_ema_decay) if args.model_ema_decay > 0 else None

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images), targets)
            loss_scaler(loss, optimizer, clip_grad=args.clip_grad or None, parameters=model.parameters())
            if model_ema is not None:
                model_ema.update(model)
    else:
        model.eval()

        def step():
            with torch.no_grad():
                model(images)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        for event in events[:args.profile]:
            print(f"{event.key:<40} {event.count / 2:>7.0f} calls {event.self_cpu_time_total / 2e3:>9.1f} ms "
                  f"{100 * event.self_cpu_time_total / total:>5.1f}%", file=sys.stderr)
        print(f"{'total':<40} {'':>13} {total / 2e3:>9.1f} ms", file=sys.stderr)
    print(json.dumps({"framework": "official", "model": args.model, "ppt": args.ppt, "train": args.train,
                      "batch_size": args.batch_size, "img_per_s": args.batch_size / median, "times": times,
                      "peak_rss_mb": process_peak_mb(),
                      "torch": torch.__version__, "timm": timm.__version__}))


if __name__ == "__main__":
    main()
