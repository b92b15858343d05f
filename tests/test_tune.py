"""tools/tune.py and mindppt.engine.tune / search: the search space meets the GMACs target; the searches stay
within their budget and evaluate no setting twice; through the tool: bad targets are one-line errors before
any work, an interrupted run (SIGTERM, as Ctrl-C becomes under MindSpore) continues without evaluating a
setting again, the calibration and held-out images are disjoint, the written YAML gives the reported GMACs
in tools/eval.py, and the comparison with random search runs both at equal cost."""
import csv
import json
import os
import runpy
import signal
import subprocess
import time

import numpy as np
import pytest
from analysis_helpers import MODEL, eval_args, make_setup
from PIL import Image
from tool_helpers import ROOT, assert_no_traceback, run_command, tool_command, tool_env

from mindppt.engine.build import create_eval_loader
from mindppt.engine.search import Candidate, SearchRun, cheapest_within, random_search, staged_search
from mindppt.engine.tune import COLUMNS, paper_blocks, search_space, split_images
from mindppt.models import create_model
from mindppt.models.flops import model_gmacs
from mindppt.plots import DPI, TUNING_SIZE

TUNE = os.path.join(ROOT, "tools", "tune.py")
EVAL = os.path.join(ROOT, "tools", "eval.py")
BUDGET = 8
CALIB = 12  # of the 30 validation images of the tiny set


def tool_main(path):
    """The ``main`` of a tool, run in this process (its real parser and run_tool)."""
    return runpy.run_path(path)["main"]


def run_in_process(path, argv, capsys):
    """``(exit status, stdout, stderr)`` of a tool run in this process through its own run_tool."""
    namespace = runpy.run_path(path)
    status = namespace["run_tool"](namespace["main"], [str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


# ---- the search space and the strategies, on the tiny ViT's analytic GMACs ----------------------------
@pytest.fixture(scope="module")
def dense():
    return create_model(MODEL, num_classes=3, r_tokens=0)


def synthetic_accuracy(space):
    """A made-up calibration result: removing tokens early costs accuracy, pooling costs less than
    pruning, so the searches have something to find (no model runs)."""
    def evaluate(candidate):
        early = sum(r * (space.depth - i) for i, r in enumerate(candidate.r))
        pooled = np.mean(candidate.shares) if candidate.shares else 1.0
        top1 = 90.0 - 0.2 * early * (1.5 - pooled)
        return {"top1": round(top1, 1), "loss": 1.0 - top1 / 100, "gmacs": space.gmacs(candidate.r)}
    return evaluate


def test_schedule_costing_equals_a_built_model(dense):
    for r, blocks in ((3, [1, 2, 3]), ([0, 5, 2, 0, 1, 0], [1, 2, 4]), (8, [0, 1, 2, 3, 4, 5])):
        built = create_model(MODEL, num_classes=3, r_tokens=r, pp_loc_list=blocks)
        assert dense.schedule_with(r, blocks) == built.token_schedule
        assert model_gmacs(dense, dense.schedule_with(r, blocks)) == pytest.approx(model_gmacs(built), rel=1e-12)


def test_fit_meets_the_target_tightly(dense):
    space = search_space(dense)
    target = 0.6 * model_gmacs(dense)
    for blocks, weights in (((1, 2, 3), None), ((1, 3, 4), [1.0, 2.0, 0.5]), ((0, 5), None)):
        r = space.fit(blocks, target, weights)
        assert r is not None and space.gmacs(r) <= target
        assert set(Candidate(r).blocks) <= set(blocks)
        # one token fewer anywhere costs more than the target (the fit leaves no slack)
        assert all(space.gmacs(r[:b] + (r[b] - 1,) + r[b + 1:]) > target for b in Candidate(r).blocks if r[b] > 1)
    uniform = search_space(dense, uniform_r=True).fit((1, 2, 3), target)
    assert len({uniform[b] for b in (1, 2, 3)}) == 1
    assert space.fit((5,), target) is None  # the last block alone cannot save 40%
    assert paper_blocks(12) == (3, 6, 9) and paper_blocks(6) == (1, 3, 4)


@pytest.mark.parametrize("strategy", ["staged", "random"])
def test_searches_stay_within_budget_and_evaluate_nothing_twice(dense, strategy):
    space = search_space(dense)
    target = 0.55 * model_gmacs(dense)
    seen = []
    accuracy = synthetic_accuracy(space)

    def evaluate(candidate):
        seen.append(candidate)
        return accuracy(candidate)

    run = SearchRun(evaluate, 15)
    if strategy == "staged":
        best = staged_search(space, run, target, [1, 2, 3])
    else:
        best = random_search(space, run, target, seed=0)
    assert len(seen) == len(set(seen)) == run.spent == 15
    assert all(space.gmacs(c.r) <= target for c in seen)
    assert best == max(seen, key=lambda c: (run.rows[c]["top1"], -run.rows[c]["loss"]))
    assert len({c.policy for c in seen}) == 3  # both draw from every policy
    assert len({c.blocks for c in seen}) > 2  # and move the compression blocks


def test_one_policy_and_one_r_keep_the_search_in_that_space(dense):
    space = search_space(dense, uniform_r=True, policies=["pool"], blocks=[1, 2, 3, 4])
    run = SearchRun(synthetic_accuracy(space), 10)
    staged_search(space, run, 0.6 * model_gmacs(dense), [1, 2, 3])
    for candidate in run.rows:
        assert candidate.policy == "pool" and set(candidate.blocks) <= {1, 2, 3, 4}
        # one r, fewer only where a block has too few tokens left (at most half of the non-class ones)
        one = max(candidate.r)
        schedule = dense.schedule_with(list(candidate.r), list(range(dense.depth)))
        assert all(candidate.r[b] in (one, (schedule[b][0] - 1) // 2) for b in candidate.blocks)


def test_cheapest_within_a_drop(dense):
    space = search_space(dense)
    accuracy = synthetic_accuracy(space)
    run = SearchRun(accuracy, 30)
    dense_gmacs = model_gmacs(dense)
    chosen = cheapest_within(space, run, 86.0, dense_gmacs, [1, 2, 3])
    assert run.spent <= 30 and run.rows[chosen]["top1"] >= 86.0
    cheaper = [c for c, row in run.rows.items() if space.gmacs(c.r) < space.gmacs(chosen.r)]
    assert cheaper and all(run.rows[c]["top1"] < 86.0 for c in cheaper)
    assert cheapest_within(space, SearchRun(accuracy, 10), 95.0, dense_gmacs) is None  # only dense reaches it


def test_split_is_disjoint_seeded_and_complete():
    calibration, heldout = split_images(30, CALIB, 0)
    assert len(calibration) == CALIB and not set(calibration) & set(heldout)
    assert sorted(calibration + heldout) == list(range(30))
    assert split_images(30, CALIB, 0) == (calibration, heldout) and split_images(30, CALIB, 1)[0] != calibration


# ---- through the tool ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(str(tmp_path_factory.mktemp("tune")))


def tune_argv(setup, out, *extra):
    config, ckpt = setup
    return ["-c", config, "--ckpt_path", ckpt, "--out", str(out), "--calib_images", CALIB, "--budget", BUDGET,
            *extra]


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("flags, needles", [
    (["--target_ratio", "0"], ["--target_ratio 0", "outside (0, 1]"]),
    (["--target_ratio", "1.5"], ["--target_ratio 1.5", "outside (0, 1]"]),
    (["--max_drop", "-1"], ["--max_drop -1", "below zero"]),
    (["--target_speedup", "0.8"], ["--target_speedup 0.8", "not above 1"]),
    (["--target_ratio", "0.5", "--budget", "0"], ["--budget 0", "at least one evaluation"]),
    (["--target_gmacs", "1e-6"], ["--target_gmacs 1e-06", "unreachable", "most compressed"]),
    (["--target_gmacs", "5"], ["above the dense model"]),
    (["--target_ratio", "0.5", "--max_drop", "1"], ["not allowed with argument"]),
    ([], ["one of the arguments", "is required"]),
])
def test_bad_targets_are_one_line_errors_before_any_work(setup, tmp_path, capsys, flags, needles):
    config, ckpt = setup
    out = tmp_path / "out"
    argv = ["-c", config, "--ckpt_path", ckpt, "--out", out] + flags
    status, stdout, stderr = run_in_process(TUNE, argv, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not out.exists() and "INFO" not in stdout  # nothing was evaluated or written


@pytest.fixture(scope="module")
def tuned(setup, tmp_path_factory):
    """tools/tune.py --target_ratio 0.6 stopped by SIGTERM once three settings are in tune.csv, then the
    same command to the end: ``(out dir, rows kept, second run's result)``."""
    out = tmp_path_factory.mktemp("tuned")
    cmd = tool_command(TUNE, *tune_argv(setup, out, "--target_ratio", "0.6"))
    proc = subprocess.Popen(cmd, env=tool_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = out / "tune.csv"
    while proc.poll() is None and not (path.exists() and len(csv_rows(path)) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command to continue" in stderr, stderr
    kept = path.read_text(encoding="utf-8").splitlines()
    again = run_command(cmd)
    assert again.returncode == 0, again
    assert_no_traceback(again)
    return out, kept, again


def test_an_interrupted_run_continues_without_evaluating_again(tuned):
    out, kept, again = tuned
    lines = (out / "tune.csv").read_text(encoding="utf-8").splitlines()
    assert lines[:len(kept)] == kept  # the kept rows unchanged, their timings included: not evaluated again
    rows = csv_rows(out / "tune.csv")
    assert len(rows) == 1 + BUDGET  # dense and the budget
    assert len({tuple(r[c] for c in COLUMNS[:4]) for r in rows}) == len(rows)
    record = json.loads((out / "tune.json").read_text())
    assert record["taken_from_csv"] == len(kept) - 2  # header and the dense row
    assert record["evaluated_now"] == record["evaluations"] - record["taken_from_csv"] == BUDGET - len(kept) + 2
    assert f"{len(kept) - 1} settings already in" in again.stdout


def test_calibration_and_heldout_images_are_disjoint(tuned, setup):
    out = tuned[0]
    record = json.loads((out / "tune.json").read_text())
    calibration, heldout = record["split"]["calibration"], record["split"]["heldout"]
    assert len(calibration) == CALIB and len(heldout) == 30 - CALIB and not set(calibration) & set(heldout)
    assert all(float(row["num_samples"]) == CALIB for row in csv_rows(out / "tune.csv"))  # the search saw these
    assert {row["heldout_images"] for row in record["report"]} == {30 - CALIB}
    assert [row["name"] for row in record["report"]] == ["chosen", "dense", "paper default", "pool-only",
                                                         "prune-only"]
    # the loaders of the two subsets deliver exactly those images of the split
    args = eval_args(*setup, tool="tune")
    every = np.concatenate([x for x, _ in create_eval_loader(args)[0].create_tuple_iterator(output_numpy=True)])
    for indices in (calibration, heldout):
        loader, count = create_eval_loader(args, indices=indices)
        images = np.concatenate([x for x, _ in loader.create_tuple_iterator(output_numpy=True)])
        assert count == len(indices) and np.array_equal(images, every[indices])


def test_the_written_yaml_gives_the_reported_gmacs_in_eval(tuned, tmp_path, capsys):
    out = tuned[0]
    record = json.loads((out / "tune.json").read_text())
    chosen = record["report"][0]
    assert chosen["gmacs"] <= record["target"]["gmacs"] + 1e-12 < record["dense_gmacs"]
    metrics = tmp_path / "metrics.json"
    status, stdout, _ = run_in_process(EVAL, ["-c", out / "tuned.yaml", "--metrics_out", metrics], capsys)
    assert status == 0, stdout
    assert json.loads(metrics.read_text())["gmacs"] == pytest.approx(chosen["gmacs"], rel=1e-9)
    assert f"{chosen['heldout_top1']:.2f}" in tuned[2].stdout  # the held-out table is printed
    with Image.open(out / "tune.png") as png:
        assert png.size == (round(TUNING_SIZE[0] * DPI), round(TUNING_SIZE[1] * DPI))


def test_comparison_with_random_search_at_equal_cost(setup, tmp_path, capsys):
    budget = 3
    argv = tune_argv(setup, tmp_path, "--target_ratio", "0.6", "--compare_random", "0", "1")
    argv[argv.index("--budget") + 1] = budget
    status, stdout, stderr = run_in_process(TUNE, argv, capsys)
    assert status == 0, stderr
    record = json.loads((tmp_path / "compare.json").read_text())
    for entry in record["per_seed"]:
        staged = csv_rows(tmp_path / f"seed_{entry['seed']}" / "staged" / "tune.csv")
        random = csv_rows(tmp_path / f"seed_{entry['seed']}" / "random" / "tune.csv")
        assert len(staged) == len(random) == 1 + budget  # the same number of evaluations
        assert entry["staged"]["evaluations"] == entry["random"]["evaluations"] == budget
        assert {r["calibration"] for r in staged + random} == {f"seed {entry['seed']}: {CALIB} of 30 images"}
        assert all(float(r["gmacs"]) <= record["target"]["gmacs"] + 1e-12 for r in staged[1:] + random[1:])
    for strategy in ("staged", "random"):
        values = [e[strategy]["heldout_top1"] for e in record["per_seed"]]
        assert record["heldout_top1"][strategy]["mean"] == pytest.approx(np.mean(values))
        assert f"{strategy}: held-out top-1 mean {np.mean(values):.2f}" in stdout
