"""tools/analyze.py and mindppt.engine.analysis: the statistics are what inspect_compression reports,
calibrated thresholds pool the requested share, and the figure has the expected size and points."""
import json
import math
import os

import numpy as np
import pytest
from analysis_helpers import eval_args, make_setup
from PIL import Image
from tool_helpers import ROOT, assert_error, run_tool

from mindppt.engine.analysis import block_statistics, calibrate_thresholds, collect_decisions, threshold_for_share
from mindppt.engine.build import build_eval_model, create_eval_loader
from mindppt.models import inspect_compression
from mindppt.plots import variance_figure, variance_pixels

ANALYZE = os.path.join(ROOT, "tools", "analyze.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(str(tmp_path_factory.mktemp("analysis")))


@pytest.fixture(scope="module")
def model_and_loader(setup):
    args = eval_args(*setup, "--batch_size", "8")
    model, _ = build_eval_model(args)
    loader, count = create_eval_loader(args)
    return model, loader, count


def test_threshold_for_share_counts_exactly():
    values = np.array([5, 1, 4, 2, 3, 9, 7, 8, 6, 10], np.float32) * 1e-4
    for share in (0.1, 0.3, 0.55, 0.9):
        threshold = threshold_for_share(values, share)
        assert (values < np.float32(threshold)).sum() == round(share * len(values))
    assert threshold_for_share(values, 0.0) == 0.0 and threshold_for_share(values, 1.0) == math.inf
    below = np.float32(1e-3)
    neighbours = np.array([below, np.nextafter(below, np.float32(1))], np.float32)  # no float32 between them
    assert (neighbours < np.float32(threshold_for_share(neighbours, 0.5))).sum() == 1


def test_statistics_equal_a_direct_inspect_compression_call(model_and_loader):
    model, loader, count = model_and_loader
    model.set_threshold([2e-6, 3e-6, 4e-6])
    decisions = collect_decisions(model, loader, batch_size=8)
    assert decisions.num_images == count == 30 and decisions.blocks == [1, 2, 3]
    direct_variance, direct_pooled = [], []
    for images, _ in loader.create_tuple_iterator(num_epochs=1, output_numpy=True):
        padded = np.concatenate([images, np.zeros((8 - len(images),) + images.shape[1:], images.dtype)])
        _, infos = inspect_compression(model, padded)
        direct_variance.append(np.stack([i["variance"][:len(images)] for i in infos], 1))
        direct_pooled.append(np.stack([i["pooled"][:len(images)] for i in infos], 1))
    np.testing.assert_array_equal(decisions.variance, np.concatenate(direct_variance))
    np.testing.assert_array_equal(decisions.pooled, np.concatenate(direct_pooled))
    stats = block_statistics(decisions, model.thresholds)
    for j, entry in enumerate(stats):
        column = np.concatenate(direct_variance)[:, j].astype(np.float64)
        assert entry["mean"] == pytest.approx(column.mean()) and entry["q50"] == pytest.approx(np.median(column))
        assert entry["pooled"] == int(np.concatenate(direct_pooled)[:, j].sum())
        assert entry["pooled"] + entry["pruned"] == 30
    first = collect_decisions(model, loader, batch_size=8, max_images=11)
    np.testing.assert_array_equal(first.variance, decisions.variance[:11])


@pytest.mark.parametrize("shares", [[0.2, 0.6, 0.9]])
def test_calibrated_thresholds_pool_the_requested_share(model_and_loader, shares):
    model, loader, count = model_and_loader
    collect = lambda: collect_decisions(model, loader, batch_size=8)  # noqa: E731
    thresholds, predicted = calibrate_thresholds(model, shares, collect)
    assert model.thresholds == pytest.approx(thresholds)
    measured = collect()  # a fresh run of the model at the calibrated thresholds
    for j, share in enumerate(shares):
        assert abs(int(measured.pooled[:, j].sum()) - round(share * count)) <= 1, (j, thresholds)
    np.testing.assert_array_equal(measured.pooled, predicted.pooled)


def test_variance_figure_has_expected_size_and_points(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [{"block": b, "variance": rng.lognormal(-7, 0.5, 40).astype(np.float32),
               "pooled": np.arange(40) % 3 == 0, "threshold": t} for b, t in ((1, 1e-3), (4, 0.0), (7, math.inf))]
    path = tmp_path / "variance.png"
    figure = variance_figure(path, blocks, title="test")
    with Image.open(path) as png:
        assert png.size == variance_pixels(3)
    scatters = [ax for ax in figure.axes if ax.get_xlabel() == "image"]
    assert len(scatters) == 3
    for ax in scatters:
        assert sum(len(c.get_offsets()) for c in ax.collections) >= 40  # every image is a point
        assert "mean variance" in ax.get_title()


def test_analyze_tool_writes_figure_numbers_and_calibration(setup, tmp_path):
    config, ckpt = setup
    out = tmp_path / "out"
    result = run_tool(ANALYZE, "-c", config, "--ckpt_path", ckpt, "--batch_size", "8", "--eval_threshold", "3e-6",
                      "--max_images", "20", "--target_pool_ratio", "0.25", "--out", out)
    assert result.returncode == 0, result
    assert "paste into a config:" in result.stdout and "eval_threshold: [" in result.stdout
    for name in ("variance.png", "variance.json", "variance_blocks.csv", "variance_images.csv", "calibrated.png",
                 "calibrated_images.csv", "calibrated_threshold.yaml", "summary.json"):
        assert (out / name).exists(), name
    with Image.open(out / "variance.png") as png:
        assert png.size == variance_pixels(3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 20 and summary["configured"]["thresholds"] == pytest.approx([3e-6] * 3)
    assert [b["pooled"] for b in summary["calibrated"]["blocks"]] == [5, 5, 5]  # 0.25 of 20 images
    lines = (out / "variance_images.csv").read_text().splitlines()
    assert len(lines) == 21 and lines[0].startswith("image,label,variance_block1,policy_block1")
    bad = run_tool(ANALYZE, "-c", config, "--ckpt_path", ckpt, "--out", out, "--target_pool_ratio", "0.3", "0.4")
    assert_error(bad, "--target_pool_ratio", "one per compression block (3")
