"""tools/sweep.py and mindppt.engine.sweep: settings, Pareto front, a row equal to a separate evaluation,
resuming an interrupted sweep without recomputing its rows, and the accuracy-vs-GMACs plot."""
import csv
import math
import os
import shutil

import pytest
from analysis_helpers import eval_args, make_setup
from PIL import Image
from tool_helpers import ROOT, assert_error, run_tool

import mindppt.engine.sweep as sweep_module
from mindppt.engine.evaluate import run_eval
from mindppt.engine.sweep import (
    Setting,
    compare_policies,
    expand_settings,
    pareto_front,
    read_rows,
    resolve_settings,
    run_sweep,
    write_reports,
)
from mindppt.errors import ConfigError
from mindppt.models import create_model
from mindppt.plots import DPI, TRADEOFF_SIZE, tradeoff_figure

SWEEP = os.path.join(ROOT, "tools", "sweep.py")
THRESHOLD = 3e-6  # between the variances of the random-weight model, so the adaptive rows mix policies


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(str(tmp_path_factory.mktemp("sweep")))


def test_settings_dense_first_forced_policies_once():
    settings = expand_settings([2, [0, 1, 1, 1, 0, 0]], [1e-3, 2e-3], [[1, 2, 3]], ["adaptive", "prune", "pool"])
    assert settings[0] == Setting("dense")
    assert len(settings) == 1 + 2 * (2 + 1 + 1)
    assert Setting("prune", 2, (1, 2, 3), 0.0) in settings and Setting("pool", 2, (1, 2, 3), math.inf) in settings
    assert Setting("pool", 2, (1, 2, 3), math.inf).key() == ("pool", "2", "1,2,3", "inf")
    assert Setting("adaptive", (0, 1, 1, 1, 0, 0), None, (1e-3, 2e-3, 3e-3)).key() == (
        "adaptive", "0,1,1,1,0,0", "default", "0.001,0.002,0.003")
    with pytest.raises(ConfigError, match="compresses no tokens"):
        expand_settings([0], [1e-3], None, ["prune"])


def test_settings_are_labelled_with_the_r_each_block_removes_and_measured_once():
    model = create_model("vit_digits_patch4_16", num_classes=3, r_tokens=0, pp_loc_list=[1, 2, 3])  # 17 tokens
    asked = expand_settings([2, 1000, 8, [0, 9, 9, 9, 0, 0], [1, 0, 0, 0, 0, 0]], [1e-3], None, ["adaptive", "prune"])
    settings, notes = resolve_settings(asked, model)
    clamped = (0, 8, 4, 2, 0, 0)  # at most (N - 1) // 2 of 17, 9, 5 tokens
    assert settings == [Setting("dense"), Setting("adaptive", 2, (1, 2, 3), 1e-3), Setting("prune", 2, (1, 2, 3), 0.0),
                        Setting("adaptive", clamped, (1, 2, 3), 1e-3), Setting("prune", clamped, (1, 2, 3), 0.0)]
    assert notes == [
        "--r 1000 became r=0,8,4,2,0,0: blocks [1, 2, 3] remove [8, 4, 2] tokens (at most half of a block's "
        "unprotected tokens)",
        "--r 8 is the same setting as --r 1000 (r=0,8,4,2,0,0): measured once",
        "--r 0,9,9,9,0,0 is the same setting as --r 1000 (r=0,8,4,2,0,0): measured once",
        "--r 1,0,0,0,0,0 removes no tokens: it is the dense row"]
    for setting in settings[1:]:  # the label builds the model that --r asked for
        built = create_model("vit_digits_patch4_16", num_classes=3, r_tokens=list(setting.r_tokens)
                             if isinstance(setting.r_tokens, tuple) else setting.r_tokens,
                             pp_loc_list=list(setting.pp_loc_list))
        asked_r = 2 if setting.r_tokens == 2 else 1000
        assert built.token_schedule == model.schedule_with(asked_r)
    # 17 -> 9 -> 5 -> 3 -> 2 tokens: block 5 can remove none; one r per block that is the same everywhere is an int
    settings, notes = resolve_settings(expand_settings([1000, [0, 3, 3, 3, 0, 0]], None, [[1, 2, 3, 4, 5]], ["pool"]),
                                       model)
    assert settings[1:] == [Setting("pool", (0, 8, 4, 2, 1, 0), (1, 2, 3, 4), math.inf),
                            Setting("pool", 3, (1, 2, 3), math.inf)]
    assert notes[1].startswith("--r 0,3,3,3,0,0 at blocks 1,2,3,4,5 became r=3: blocks [1, 2, 3] remove [3, 3, 3]")
    with pytest.raises(ConfigError, match="--r 2 at blocks 9: pp_loc_list entry 9 is out of range"):
        resolve_settings(expand_settings([2], None, [[9]], ["prune"]), model)


def test_pareto_front_and_policy_comparison():
    def row(policy, gmacs, top1, threshold=""):
        return {"policy": policy, "r_tokens": "2", "pp_loc_list": "1,2,3", "threshold": threshold, "gmacs": gmacs,
                "top1": top1}
    rows = [row("dense", 1.0, 90.0), row("prune", 0.8, 85.0), row("pool", 0.8, 86.0), row("adaptive", 0.8, 87.0, "a"),
            row("adaptive", 0.8, 84.0, "b"), row("prune", 0.7, 86.0)]
    rows[-1]["r_tokens"] = "3"
    front = pareto_front(rows)
    assert [(r["policy"], r["gmacs"]) for r in front] == [("prune", 0.7), ("adaptive", 0.8), ("dense", 1.0)]
    level = next(c for c in compare_policies(rows) if c["r_tokens"] == "2")
    assert (level["prune"], level["pool"], level["adaptive_best"]) == (85.0, 86.0, 87.0)
    assert level["adaptive_margin"] == pytest.approx(1.0) and level["adaptive_median"] == pytest.approx(85.5)


def test_tradeoff_figure_size_and_points(tmp_path):
    series = {"adaptive": [(0.8, 87.0), (0.8, 84.0), (0.6, 80.0)], "prune": [(0.8, 85.0), (0.6, 79.0)],
              "pool": [(0.8, 86.0), (0.6, 78.0)]}
    figure = tradeoff_figure(tmp_path / "plot.png", series, dense=(1.0, 90.0), front=[(0.6, 80.0), (1.0, 90.0)])
    with Image.open(tmp_path / "plot.png") as png:
        assert png.size == (round(TRADEOFF_SIZE[0] * DPI), round(TRADEOFF_SIZE[1] * DPI))
    points = sum(len(c.get_offsets()) for c in figure.axes[0].collections)
    assert points >= 7 + 1 + 2  # every setting, the dense star, the ringed front


@pytest.fixture(scope="module")
def swept(setup, tmp_path_factory):
    """An in-process sweep of dense, adaptive, prune and pool at r=2, interrupted (KeyboardInterrupt, as on
    Ctrl-C) during its third setting, then run again: ``(out dir, rows kept, rows, evaluations on resume)``."""
    args = eval_args(*setup, tool="sweep")
    settings = expand_settings([2], [THRESHOLD], [[1, 2, 3]], ["adaptive", "prune", "pool"])
    out = str(tmp_path_factory.mktemp("swept"))
    real_evaluate, calls = sweep_module.evaluate, []

    def interrupted(model, loader, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real_evaluate(model, loader, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep_module, "evaluate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(args, settings, out, speed_rounds=1, speed_repeats=1)
    kept = read_rows(os.path.join(out, "sweep.csv"))
    calls.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep_module, "evaluate", lambda *a, **k: calls.append(1) or real_evaluate(*a, **k))
        rows, notes = run_sweep(args, settings, out, speed_rounds=1, speed_repeats=1)
    assert notes == []  # r=2 is what every block removes
    return out, kept, rows, len(calls)


def test_an_interrupted_sweep_resumes_without_recomputing_rows(swept):
    out, kept, rows, evaluations = swept
    assert [r["policy"] for r in kept] == ["dense", "adaptive"]
    assert evaluations == 2  # prune and pool only
    assert [r["policy"] for r in rows] == ["dense", "adaptive", "prune", "pool"]
    assert rows[:2] == kept  # finished rows are kept as they were
    assert rows[2]["pooled_share"] == "0,0,0" and rows[3]["pooled_share"] == "1,1,1"
    assert len({r["gmacs"] for r in rows[1:]}) == 1 and rows[0]["gmacs"] > rows[1]["gmacs"]
    record = write_reports(out, rows)
    assert record["pareto_front"] and "adaptive_margin" in record["policy_comparison"][0]
    for name in ("sweep.json", "sweep.txt", "sweep.png"):
        assert os.path.exists(os.path.join(out, name))
    identity = {"model": rows[0]["model"], "weights_sha256": "0" * 16, "data": rows[0]["data"]}
    with pytest.raises(ConfigError, match="holds a sweep of weights_sha256"):  # e.g. retrained at the same path
        read_rows(os.path.join(out, "sweep.csv"), identity)


def test_a_sweep_row_equals_a_separate_eval_run(setup, swept):
    rows = swept[2]
    for row in (rows[1], rows[3]):  # adaptive and pool-only, as tools/eval.py computes them
        single = eval_args(*setup, "--r_tokens", row["r_tokens"], "--pp_loc_list", row["pp_loc_list"],
                           "--eval_threshold", row["threshold"], tool="eval")
        metrics, _ = run_eval(single)
        for key in ("top1", "top5", "gmacs", "num_samples"):
            assert row[key] == pytest.approx(metrics[key], rel=1e-6), (row["policy"], key)
        assert row["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_sweep_tool_adds_settings_to_an_existing_table(setup, swept, tmp_path):
    config, ckpt = setup
    shutil.copy(os.path.join(swept[0], "sweep.csv"), tmp_path / "sweep.csv")
    result = run_tool(SWEEP, "-c", config, "--ckpt_path", ckpt, "--out", tmp_path, "--r", "2", "--thresholds",
                      str(THRESHOLD), "1.0", "--policy", "adaptive", "prune", "pool")
    assert result.returncode == 0, result
    assert "5 settings, 4 already in" in result.stdout and "1 to run" in result.stdout
    assert "table, CSV, JSON and plot written" in result.stdout
    with open(tmp_path / "sweep.csv", newline="") as f:
        assert [r["policy"] for r in csv.DictReader(f)] == ["dense", "adaptive", "prune", "pool", "adaptive"]
    refused = run_tool(SWEEP, "-c", config, "--ckpt_path", ckpt, "--out", tmp_path, "--r", "2",
                       "--eval_threshold", "1e-3")
    assert_error(refused, "unrecognized arguments: --eval_threshold")
    assert "hint: tools/sweep.py takes eval_threshold from its recipe only; use --thresholds" in refused.stderr


def test_sweep_tool_labels_a_clamped_r_with_what_each_block_removes(setup, tmp_path):
    config, ckpt = setup  # 17 tokens, compression at blocks 1, 2, 3
    result = run_tool(SWEEP, "-c", config, "--ckpt_path", ckpt, "--out", tmp_path, "--r", "1000", "8",
                      "--policy", "prune")
    assert result.returncode == 0, result
    assert "--r 1000 at blocks 1,2,3 became r=0,8,4,2,0,0: blocks [1, 2, 3] remove [8, 4, 2] tokens" in result.stdout
    assert "--r 8 at blocks 1,2,3 is the same setting as --r 1000 at blocks 1,2,3 (r=0,8,4,2,0,0): measured once" \
        in result.stdout
    assert "2 settings, 0 already in" in result.stdout
    with open(tmp_path / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["policy"], r["r_tokens"], r["pp_loc_list"]) for r in rows] == [
        ("dense", "0", ""), ("prune", "0,8,4,2,0,0", "1,2,3")]
    assert rows[1]["tokens_per_block"] == "17,9,5,3,3,3"  # what the measured model kept: the label's schedule
    report = (tmp_path / "sweep.txt").read_text()
    assert "--r 1000 at blocks 1,2,3 became r=0,8,4,2,0,0" in report
    table = report.split("measured once\n")[1]
    assert "1000" not in table and "0,8,4,2,0,0" in table  # no row is labelled 1000
