"""Timing several candidates fairly on a shared machine: every candidate is compiled and warmed up apart,
then the timed calls alternate round after round (each candidate in turn), so that drift and the load of
other processes hit all of them alike; medians are reported.

One implementation for the benchmark (:mod:`mindppt.engine.benchmark`: models in this process, or one
process per measurement) and the forward throughput of the demo and the sweep (:func:`paired_throughput`).
"""
import contextlib
import dataclasses
import functools
import os
import statistics
import threading
import time

import mindspore as ms
import numpy as np

__all__ = ["round_robin", "alternate", "Timing", "time_call", "random_images", "paired_throughput", "rss_mb",
           "PeakMemory"]


def rss_mb():
    """This process's resident memory now (MB, Linux /proc)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Samples the process's resident memory while a block runs (Linux /proc); ``peak`` in MB."""

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


def round_robin(candidates, rounds, measure):
    """``{candidate: [its measurement in round 1, round 2, ...]}``: each round calls
    ``measure(candidate, round_index)`` for every candidate in turn."""
    results = {candidate: [] for candidate in candidates}
    for round_index in range(rounds):
        for candidate in candidates:
            results[candidate].append(measure(candidate, round_index))
    return results


@dataclasses.dataclass
class Timing:
    """One candidate's timing: the first call (graph compilation + one run), the timed calls (seconds) and,
    when sampled, the process's peak resident memory (MB) while they ran."""
    compile_s: float
    times: list
    peak_mb: float = None

    @property
    def median_s(self):
        return statistics.median(self.times)


def time_call(call):
    """Seconds of one ``call()``, the Tensor it returns waited for (device sync)."""
    start = time.perf_counter()
    call().asnumpy()
    return time.perf_counter() - start


def alternate(calls, *, rounds, iters, warmup=1, memory=False):
    """Time each of ``calls`` (``{name: zero-argument callable returning a Tensor}``): one call each
    (compilation, timed apart) and ``warmup`` more, then ``rounds`` rounds in which each runs ``iters``
    timed calls in turn. ``memory``: also sample the resident memory during each one's timed calls.
    Returns ``{name: Timing}``."""
    compile_s = {}
    for name, call in calls.items():
        compile_s[name] = time_call(call)
        for _ in range(warmup):
            time_call(call)
    peaks = dict.fromkeys(calls, 0.0)

    def measure(name, _round_index):
        with PeakMemory() if memory else contextlib.nullcontext() as sampler:
            times = [time_call(calls[name]) for _ in range(iters)]
        if memory:
            peaks[name] = max(peaks[name], sampler.peak)
        return times

    per_round = round_robin(calls, rounds, measure)
    return {name: Timing(compile_s[name], [t for times in per_round[name] for t in times],
                         peaks[name] if memory else None) for name in calls}


def random_images(batch_size, image_size, in_channels=3, seed=0):
    """A fixed batch of standard-normal images, NCHW float32."""
    rng = np.random.default_rng(seed)
    return ms.Tensor(rng.standard_normal((batch_size, in_channels, image_size, image_size), np.float32))


def paired_throughput(models, *, batch_size, image_size, in_channels=3, rounds=3, repeats=8, warmup=2):
    """Forward img/s of each model of ``{name: model}`` (eval mode) on one random batch, timed alternately
    (:func:`alternate`): batch size over the median call."""
    images = random_images(batch_size, image_size, in_channels)
    for model in models.values():
        model.set_train(False)
    timings = alternate({name: functools.partial(model, images) for name, model in models.items()},
                        rounds=rounds, iters=repeats, warmup=warmup)
    return {name: batch_size / timing.median_s for name, timing in timings.items()}
