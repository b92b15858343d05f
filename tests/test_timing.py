"""mindppt.engine.timing, the one alternating timing of the benchmark, the demo and the sweep: the order of
the calls (compilation and warm-up apart, then candidates in turn round after round), what is kept of
them, and paired_throughput on real models. Values and order, not speed."""
import mindspore as ms
import numpy as np

from mindppt.engine.timing import alternate, paired_throughput, random_images, round_robin
from mindppt.models import create_model


def test_round_robin_measures_every_candidate_in_turn_each_round():
    order = []
    results = round_robin(["a", "b", "c"], 2, lambda name, i: order.append((i, name)) or f"{name}{i}")
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]
    assert results == {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0", "c1"]}


def test_alternate_compiles_and_warms_up_apart_then_alternates_the_timed_calls():
    order = []

    def candidate(name):
        def call():
            order.append(name)
            return ms.Tensor(np.zeros(1, np.float32))
        return call

    timings = alternate({"x": candidate("x"), "y": candidate("y")}, rounds=3, iters=2, warmup=1, memory=True)
    # first call + 1 warm-up each, one candidate after the other; then 3 rounds of 2 calls each, in turn
    assert order == ["x", "x", "y", "y"] + ["x", "x", "y", "y"] * 3
    for timing in timings.values():
        assert len(timing.times) == 6 and timing.compile_s > 0 and timing.peak_mb > 0
        assert timing.median_s == float(np.median(timing.times))
    assert alternate({"x": candidate("x")}, rounds=1, iters=1)["x"].peak_mb is None  # not sampled unless asked


def test_paired_throughput_times_each_model_in_eval_mode():
    models = {name: create_model(name, num_classes=3) for name in ("vit_digits_patch4_16", "ppt_vit_digits_patch4_16")}
    for model in models.values():
        model.set_train(True)
    speeds = paired_throughput(models, batch_size=2, image_size=16, rounds=1, repeats=1, warmup=0)
    assert list(speeds) == list(models) and all(v > 0 for v in speeds.values())
    assert not any(model.training for model in models.values())
    images = random_images(2, 16)
    assert images.shape == (2, 3, 16, 16) and images.dtype == ms.float32
    np.testing.assert_array_equal(images.asnumpy(), random_images(2, 16).asnumpy())  # one fixed batch
