"""mindppt.engine.benchmark and tools/benchmark.py: model selection (registered names, ``all`` and patterns as
dense/PPT pairs), the closing table, checked against the registry and ``flops.model_gmacs``, and isolated
measurements (one process per model: its own peak memory). Values, not speed."""
import json
import os

import pytest
from tool_helpers import ROOT, assert_error, run_tool

from mindppt.engine import benchmark
from mindppt.models import create_model, list_models
from mindppt.models.flops import count_params, model_gmacs

BENCHMARK = os.path.join(ROOT, "tools", "benchmark.py")


def test_all_selects_every_registered_model_in_dense_ppt_pairs():
    groups = benchmark.select_models(["all"])
    assert sorted(name for group in groups for name in group) == list_models()
    for group in groups:
        assert group == [group[0], "ppt_" + group[0]], group
    # a pattern matching either name of a pair brings its partner; names as given stay one group, in order
    assert benchmark.select_models(["ppt_deit_tiny*"]) == [
        ["deit_tiny_distilled_patch16_224", "ppt_deit_tiny_distilled_patch16_224"],
        ["deit_tiny_patch16_224", "ppt_deit_tiny_patch16_224"]]
    assert benchmark.select_models(["ppt_vit_digits_patch4_16", "vit_tiny_patch16_224"]) == [
        ["ppt_vit_digits_patch4_16", "vit_tiny_patch16_224"]]
    with pytest.raises(ValueError, match="unknown model 'vit_huge'"):
        benchmark.select_models(["vit_tiny_patch16_224", "vit_huge"])
    with pytest.raises(ValueError, match="'swin_\\*' matches no registered model"):
        benchmark.select_models(["all", "swin_*"])


def table_rows(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return header, [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_pattern_run_writes_the_table_of_the_pair(tmp_path):
    out_json, out_md = tmp_path / "zoo.json", tmp_path / "zoo.md"
    argv = ["--models", "*digits*", "--batch_size", "2", "--num_classes", "3", "--rounds", "1", "--iters", "1",
            "--warmup", "0", "--json", str(out_json), "--markdown", str(out_md)]
    result = run_tool(BENCHMARK, *argv)
    assert result.returncode == 0, result
    with open(out_json, encoding="utf-8") as f:
        rows = {row["model"]: row for row in json.load(f)}
    assert list(rows) == ["vit_digits_patch4_16", "ppt_vit_digits_patch4_16"]
    for name, row in rows.items():
        model = create_model(name, num_classes=3)
        assert row["image_size"] == model.img_size == 16  # each model's own resolution
        assert row["gmacs"] == model_gmacs(model)
        assert round(row["params_m"] * 1e6) == count_params(model)
        assert row["tokens"] == [model.token_schedule[0][0]] + [
            n_out for n_in, n_out in model.token_schedule if n_out < n_in]
        assert row["batch_size"] == 2 and row["img_per_s"] > 0
    dense, ppt = rows["vit_digits_patch4_16"], rows["ppt_vit_digits_patch4_16"]
    assert dense["tokens"] == [17] and ppt["tokens"] == [17, 14, 11, 8]

    with open(out_md, encoding="utf-8") as f:
        markdown = f.read()
    assert "`python tools/benchmark.py --models '*digits*' --batch_size 2" in markdown  # the exact command
    assert "cpus (" in markdown and "load average" in markdown
    header, table = table_rows(markdown)
    assert header == ["model", "params (M)", "dense GMACs", "PPT GMACs", "PPT tokens", "batch", "dense img/s",
                      "PPT img/s", "PPT / dense"]
    assert table == [{
        "model": "vit_digits_patch4_16", "params (M)": f"{dense['params_m']:.2f}",
        "dense GMACs": f"{dense['gmacs']:.3f}", "PPT GMACs": f"{ppt['gmacs']:.3f}", "PPT tokens": "17->14->11->8",
        "batch": "2", "dense img/s": f"{dense['img_per_s']:.2f}", "PPT img/s": f"{ppt['img_per_s']:.2f}",
        "PPT / dense": f"{ppt['img_per_s'] / dense['img_per_s']:.2f}"}]
    assert markdown in result.stdout  # printed as written


def test_unknown_model_is_one_error_line(tmp_path):
    result = run_tool(BENCHMARK, "--models", "deit_smal_patch16_224", "--json", tmp_path / "x.json")
    assert_error(result, "--models", "deit_smal_patch16_224")
    assert not (tmp_path / "x.json").exists()


def test_isolated_runs_report_each_models_own_peak_memory_training_included(tmp_path):
    """--isolate: every (model, mode) in a fresh process, alternating; the peak is that process's own maximum
    resident set (VmHWM: above an interpreter with MindSpore loaded, not the parent's carried over), and the
    table gains the memory columns."""
    out_json, out_md = tmp_path / "zoo.json", tmp_path / "zoo.md"
    result = run_tool(BENCHMARK, "--models", "*digits*", "--batch_size", "2", "--num_classes", "3", "--rounds", "2",
                      "--iters", "1", "--warmup", "0", "--isolate", "--train", "--json", out_json,
                      "--markdown", out_md)
    assert result.returncode == 0, result
    assert result.stdout.count("round 1/2:") == 4 and result.stdout.count("round 2/2:") == 4  # 2 models x 2 modes
    with open(out_json, encoding="utf-8") as f:
        rows = json.load(f)
    assert sorted((r["model"], r["mode"]) for r in rows) == sorted(
        (m, mode) for m in ("vit_digits_patch4_16", "ppt_vit_digits_patch4_16") for mode in ("infer", "train"))
    for row in rows:
        assert row["framework"] == "mindppt" and len(row["rounds"]) == 2
        assert 200 < row["process_peak_mb"] < 8000, row
        assert row["process_peak_mb"] != benchmark.process_peak_mb()
    with open(out_md, encoding="utf-8") as f:
        markdown = f.read()
    assert "each measurement in its own process" in markdown
    header, table = table_rows(markdown)
    assert header[-3:] == ["dense peak (MB)", "PPT peak (MB)", "PPT / dense memory"] and "mode" in header
    by_mode = {(r["model"], r["mode"]): r for r in rows}
    for line in table:
        dense = by_mode[("vit_digits_patch4_16", line["mode"])]
        ppt = by_mode[("ppt_vit_digits_patch4_16", line["mode"])]
        assert line["dense peak (MB)"] == f"{dense['process_peak_mb']:.0f}"
        assert line["PPT / dense memory"] == f"{ppt['process_peak_mb'] / dense['process_peak_mb']:.3f}"


def test_official_comparison_options_are_checked_before_any_work(tmp_path):
    result = run_tool(BENCHMARK, "--official_repo", tmp_path)
    assert_error(result, "--official_repo and --official_python go together")
    result = run_tool(BENCHMARK, "--official_repo", tmp_path, "--official_python", "python3")
    assert_error(result, "--official_repo", "ppt_deit.py")


def test_official_table_pairs_rows_of_the_same_model_batch_and_mode():
    rows = [{"model": "ppt_x", "batch_size": 8, "mode": "infer", "framework": "mindppt", "img_per_s": 30.0,
             "process_peak_mb": 900.0},
            {"model": "ppt_x", "batch_size": 8, "mode": "infer", "framework": "official", "img_per_s": 25.0,
             "process_peak_mb": 1000.0},
            {"model": "ppt_x", "batch_size": 8, "mode": "train", "framework": "mindppt", "img_per_s": 9.0,
             "process_peak_mb": 2000.0}]
    header, table = table_rows(benchmark.official_table(rows))
    assert [line["mode"] for line in table] == ["infer"]  # no official train row: not listed
    assert table[0]["mindppt / official"] == "1.20" and table[0]["mindppt / official memory"] == "0.90"
