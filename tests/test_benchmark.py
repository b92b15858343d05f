"""mindppt.engine.benchmark (the logic of tools/benchmark.py), called directly: model selection (registered
names, ``all`` and patterns as dense/PPT pairs), the option checks, in-process measurements of the digits
models (inference, the exported graph, the trainer's own training step) checked against the registry and
``flops.model_gmacs``, isolated measurements (one process per model: its own peak memory), the closing
tables; then one quick run of the tool itself. Values, not speed."""
import json
import math
import os
import re
import sys

import numpy as np
import pytest
from mindspore import nn
from tool_helpers import ROOT, assert_error, run_tool

from mindppt.engine import benchmark
from mindppt.engine.schedule import recipe_lr_values
from mindppt.engine.train_step import TrainStep
from mindppt.errors import ConfigError
from mindppt.models import create_model, list_models
from mindppt.models.flops import model_gmacs

BENCHMARK = os.path.join(ROOT, "tools", "benchmark.py")
DIGITS = ["vit_digits_patch4_16", "ppt_vit_digits_patch4_16"]


def settings(**overrides):
    """The measurement settings run_benchmark derives from its options, for the digits models."""
    options = benchmark.parse_options(["--num_classes", "3", "--rounds", "2", "--iters", "1", "--warmup", "0"])
    values = {"image_size": options.image_resize, "num_classes": options.num_classes, "amp_level": options.amp_level,
              "train_options": ("--loss_scale_type", "dynamic", "--clip_grad", "true", "--clip_value", "1.0",
                                "--ema", "True",
                                "--drop_path_rate", "0.1"),
              "warmup": options.warmup, "rounds": options.rounds, "iters": options.iters, "jit_level": ""}
    values.update(overrides)
    return values


def test_all_selects_every_registered_model_in_dense_ppt_pairs():
    groups = benchmark.select_models(["all"])
    assert sorted(name for group in groups for name in group) == list_models()
    for group in groups:
        assert group == [group[0], "ppt_" + group[0]], group
    # a pattern matching either name of a pair brings its partner; names as given stay one group, in order
    assert benchmark.select_models(["ppt_deit_tiny*"]) == [
        ["deit_tiny_distilled_patch16_224", "ppt_deit_tiny_distilled_patch16_224"],
        ["deit_tiny_patch16_224", "ppt_deit_tiny_patch16_224"]]
    assert benchmark.select_models(["ppt_vit_digits_patch4_16", "vit_tiny_patch16_224", "ppt_vit_digits_patch4_16"]) \
        == [["ppt_vit_digits_patch4_16", "vit_tiny_patch16_224"]]  # a name given twice is measured once
    with pytest.raises(ConfigError, match="unknown model 'vit_huge'"):
        benchmark.select_models(["vit_tiny_patch16_224", "vit_huge"])
    with pytest.raises(ConfigError, match="'swin_\\*' matches no registered model"):
        benchmark.select_models(["all", "swin_*"])


def test_shared_options_are_checked_by_their_type_on_parsing():
    with pytest.raises(ConfigError, match="--image_resize.*expected an int in \\[1"):
        benchmark.parse_options(["--image_resize", "0"])
    with pytest.raises(ConfigError, match="--clip_grad.*boolean"):
        benchmark.parse_options(["--clip_grad", "0.5"])


@pytest.mark.parametrize("argv, message", [
    (["--batch_size", "8", "0"], "--batch_size 0: expected an integer >= 1"),
    (["--rounds", "0"], "--rounds 0: expected an integer >= 1"),
    (["--warmup", "-1"], "--warmup -1: expected an integer >= 0"),
    (["--models", "deit_smal_patch16_224"], "--models: unknown model 'deit_smal_patch16_224'"),
    (["--models", "swin_*"], "--models: 'swin_*' matches no registered model"),
    (["--official_repo", "{tmp}"], "--official_repo and --official_python go together"),
    (["--official_repo", "{tmp}", "--official_python", "python3"], "--official_repo {tmp}: no ppt_deit.py there"),
    (["--official_repo", "{repo}", "--official_python", "{tmp}/no_python"], "--official_python {tmp}/no_python: "
                                                                              "not an executable"),
    (["--json", "{tmp}/missing/zoo.json"], "--json {tmp}/missing/zoo.json: the folder {tmp}/missing does not exist"),
])
def test_unusable_options_are_refused_before_any_work(tmp_path, argv, message):
    repo = tmp_path / "PPT"
    repo.mkdir()
    (repo / "ppt_deit.py").write_text("")
    fill = lambda text: text.format(tmp=tmp_path, repo=repo)  # noqa: E731
    options = benchmark.parse_options([fill(a) for a in argv])
    with pytest.raises(ConfigError) as error:
        benchmark.check_options(options)
    assert str(error.value).startswith(fill(message)), error.value
    options.official_python = "python3"  # with an existing Python the official options pass
    if options.official_repo == str(repo):
        assert benchmark.check_options(options) == benchmark.select_models(options.models)


def test_in_process_rows_describe_each_model_and_its_exported_graph():
    """The digits pair and the PPT model's MINDIR graph, alternated in this process: every row carries the
    model's own resolution, GMACs, parameters and token schedule; the closing table pairs dense and PPT and
    leaves the MINDIR row out."""
    specs = [(DIGITS[0], False), (DIGITS[1], False), (DIGITS[1], True)]
    rows = benchmark.measure_together(specs, 2, False, settings())
    assert [row["model"] for row in rows] == [*DIGITS, DIGITS[1] + " [MINDIR]"]
    for row, (name, _) in zip(rows, specs):
        model = create_model(name, num_classes=3)
        assert row["image_size"] == model.img_size == 16  # each model's own resolution
        assert row["gmacs"] == model_gmacs(model)
        assert round(row["params_m"] * 1e6) == sum(p.size for p in model.trainable_params())
        assert row["mode"] == "infer" and row["batch_size"] == 2 and row["repeats"] == 2  # 2 rounds x 1 call
        assert row["img_per_s"] > 0 and row["compile_s"] > 0 and row["peak_mem_mb"] > 0
    dense, ppt = rows[0], rows[1]
    assert dense["tokens"] == [17] and ppt["tokens"] == [17, 14, 11, 8]
    assert rows[0]["speedup_vs_first"] == 1.0
    assert math.isclose(ppt["speedup_vs_first"], ppt["img_per_s"] / dense["img_per_s"])

    header, table = table_rows(benchmark.zoo_table(rows))
    assert header == ["model", "params (M)", "dense GMACs", "PPT GMACs", "PPT tokens", "batch", "dense img/s",
                      "PPT img/s", "PPT / dense"]
    assert table == [{
        "model": DIGITS[0], "params (M)": f"{dense['params_m']:.2f}", "dense GMACs": f"{dense['gmacs']:.3f}",
        "PPT GMACs": f"{ppt['gmacs']:.3f}", "PPT tokens": "17->14->11->8", "batch": "2",
        "dense img/s": f"{dense['img_per_s']:.2f}", "PPT img/s": f"{ppt['img_per_s']:.2f}",
        "PPT / dense": f"{ppt['img_per_s'] / dense['img_per_s']:.2f}"}]


def test_exported_runner_runs_the_mindir_graph():
    """``exported``: the graph tools/export.py writes (random weights of its own), at the runner's batch."""
    cell = benchmark.Runner(DIGITS[1], 2, False, settings())
    graph = benchmark.Runner(DIGITS[1], 2, False, settings(), exported=True)
    assert isinstance(graph.cell, nn.GraphCell) and not isinstance(cell.cell, nn.GraphCell)
    logits = graph.call().asnumpy()
    assert logits.shape == cell.call().shape == (2, 3) and np.isfinite(logits).all()


def test_training_runner_times_the_trainers_own_step():
    """``train``: the step of mindppt.engine.trainer.build_recipe_step for the recipe with the benchmark's
    options: the recipe's learning-rate table, dynamic loss scaling, clipping and EMA as asked; one call
    is one optimisation step."""
    runner = benchmark.Runner(DIGITS[1], 2, True, settings())
    step = runner.cell
    assert isinstance(step, TrainStep)
    assert step.dynamic and step.use_scaling and step.clip and step.clip_value == 1.0 and step.use_ema
    args = benchmark.train_config(DIGITS[1], 2, 16, 3, ())
    np.testing.assert_array_equal(step.optimizer.learning_rate.schedule.values.asnumpy(), recipe_lr_values(args))
    before = {p.name: p.asnumpy().copy() for p in runner.model.trainable_params()}
    loss = float(runner.call().asnumpy())
    assert math.isfinite(loss) and int(step.optimizer.global_step.asnumpy().reshape(-1)[0]) == 1
    assert any(not np.array_equal(p.asnumpy(), before[p.name]) for p in runner.model.trainable_params())

    plain = benchmark.Runner(DIGITS[1], 2, True, settings(train_options=("--loss_scale_type", "none",
                                                                         "--clip_grad", "false", "--ema", "false")))
    assert not (plain.cell.use_scaling or plain.cell.clip or plain.cell.use_ema)


def table_rows(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return header, [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_isolated_runs_report_each_models_own_peak_memory():
    """Every measurement in a fresh process, the models alternating round by round; the peak is that
    process's own maximum resident set (VmHWM: above an interpreter with MindSpore loaded, not the parent's
    carried over), and the table gains the memory columns."""
    seen = []
    rows = benchmark.measure_alternating(DIGITS, 2, False, settings(), "CPU",
                                         progress=lambda i, row: seen.append((i, row["model"])))
    assert seen == [(0, DIGITS[0]), (0, DIGITS[1]), (1, DIGITS[0]), (1, DIGITS[1])]  # alternating
    assert [row["model"] for row in rows] == DIGITS
    for row in rows:
        assert row["framework"] == "mindppt" and len(row["rounds"]) == 2 and row["img_per_s"] > 0
        assert "speedup_vs_first" not in row
        assert 200 < row["process_peak_mb"] < 8000, row
        assert row["process_peak_mb"] != benchmark.process_peak_mb()
    header, table = table_rows(benchmark.zoo_table(rows))
    assert header[-3:] == ["dense peak (MB)", "PPT peak (MB)", "PPT / dense memory"]
    dense, ppt = rows
    assert table[0]["dense peak (MB)"] == f"{dense['process_peak_mb']:.0f}"
    assert table[0]["PPT / dense memory"] == f"{ppt['process_peak_mb'] / dense['process_peak_mb']:.3f}"


# A stand-in for the official repository and timm 0.4.12 (neither is installed here): the tool imports
# them from the checkout it is given, and the stand-ins record what it asked for and whether MindSpore
# was loaded in that process.
_FAKE_TIMM = """
import json, os, sys, torch
__version__ = "0.4.12-fake"
class _Model(torch.nn.Module):
    default_cfg = {"input_size": (3, 32, 32)}
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        self.head = torch.nn.Linear(3 * 32 * 32, 1000)
    def forward(self, x):
        return self.head(x.flatten(1))
def create_model(name, pretrained=False, **kwargs):
    assert "mindspore" not in sys.modules, "the official timing imported MindSpore"
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "model.json"), "w") as f:
        json.dump(kwargs, f)
    model = _Model(**kwargs)
    model.name = name
    return model
"""
_FAKE_LOSS = """
import torch
class SoftTargetCrossEntropy(torch.nn.Module):
    def forward(self, x, target):
        return torch.sum(-target * torch.nn.functional.log_softmax(x, dim=-1), dim=-1).mean()
"""
_FAKE_UTILS = """
import json, os, torch
def _record(key, value):
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "step.json")
    seen = json.load(open(path)) if os.path.exists(path) else {}
    seen[key] = value
    json.dump(seen, open(path, "w"))
class NativeScaler:
    def __init__(self):
        self._scaler = None
    def __call__(self, loss, optimizer, clip_grad=None, clip_mode="norm", parameters=None, create_graph=False):
        _record("scaler", [self._scaler.is_enabled(), self._scaler.get_scale() if self._scaler.is_enabled() else None])
        _record("clip_grad", clip_grad)
        self._scaler.scale(loss).backward()
        self._scaler.step(optimizer)
        self._scaler.update()
class ModelEma:
    def __init__(self, model, decay):
        self.decay = decay
    def update(self, model):
        _record("ema_decay", self.decay)
"""
_FAKE_PPT = """
import json, os
def apply_patch(model, prop_attn, pp_loc_list, threshold):
    with open(os.path.join(os.path.dirname(__file__), "patched.json"), "w") as f:
        json.dump({"model": model.name, "prop_attn": prop_attn, "pp_loc_list": pp_loc_list,
                   "threshold": threshold}, f)
"""


def test_official_timing_runs_the_checkout_it_is_given_without_mindspore(tmp_path):
    """measure_official -> tools/official_ppt_timing.py, under a Python that has torch: the checkout's
    apply_patch gets the PPT model's own setting, its training step the loss scaling, clipping, EMA and
    drop path that mindppt's step has, and the row comes back with the official code's speed, memory and
    versions."""
    repo = tmp_path / "PPT"
    (repo / "timm").mkdir(parents=True)
    (repo / "timm" / "__init__.py").write_text(_FAKE_TIMM)
    (repo / "timm" / "loss.py").write_text(_FAKE_LOSS)
    (repo / "timm" / "utils.py").write_text(_FAKE_UTILS)
    (repo / "ppt_deit.py").write_text(_FAKE_PPT)
    recipe = ("--loss_scale_type", "dynamic", "--clip_grad", "True", "--clip_value", "1.0", "--ema", "True",
              "--drop_path_rate", "0.2")
    bare = ("--loss_scale_type", "none", "--clip_grad", "False", "--ema", "False", "--drop_path_rate", "0.1")
    expected = {recipe: {"scaler": [True, 1024.0], "clip_grad": 1.0, "ema_decay": 0.99996},
                bare: {"scaler": [False, None], "clip_grad": None}}
    for train, train_options in ((False, bare), (True, recipe), (True, bare)):
        settings = {"warmup": 1, "iters": 2, "image_size": None, "num_classes": 1000, "train_options": train_options}
        row = benchmark.measure_official("ppt_deit_tiny_patch16_224", 2, train, settings, str(repo), sys.executable)
        assert row["framework"] == "official" and row["mode"] == ("train" if train else "infer")
        assert row["img_per_s"] > 0 and row["process_peak_mb"] > 0
        assert row["versions"].endswith("timm 0.4.12-fake")
        model = json.loads((repo / "model.json").read_text())
        assert model == {"drop_path_rate": float(train_options[-1]) if train else 0.0, "num_classes": 1000}
        if train:
            step = repo / "step.json"
            assert json.loads(step.read_text()) == expected[train_options], train_options
            step.unlink()
    patched = json.loads((repo / "ppt_deit.py").with_name("patched.json").read_text())
    threshold = patched.pop("threshold")
    assert patched == {"model": "deit_tiny_patch16_224", "prop_attn": True, "pp_loc_list": [3, 6, 9]}
    assert threshold == pytest.approx(7e-5, rel=1e-6)  # the model's float32 threshold


@pytest.mark.parametrize("options, message", [
    (("--amp_level", "O2"), "--amp_level O2 with --official_repo: the official timing runs in float32"),
    (("--train", "--loss_scale_type", "fixed"), "--loss_scale_type fixed with --official_repo: the official "
                                                 "training step scales dynamically"),
])
def test_official_comparison_refuses_a_step_the_official_code_cannot_run(tmp_path, options, message):
    (tmp_path / "ppt_deit.py").write_text("")
    parsed = benchmark.parse_options(["--official_repo", str(tmp_path), "--official_python", sys.executable,
                                      *options])
    with pytest.raises(ConfigError, match=re.escape(message)):
        benchmark.check_options(parsed)


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


def test_the_tool_prints_and_writes_the_report_and_refuses_bad_input_in_one_line(tmp_path):
    out_json, out_md = tmp_path / "zoo.json", tmp_path / "zoo.md"
    result = run_tool(BENCHMARK, "--models", "*digits*", "--batch_size", "2", "--num_classes", "3", "--rounds", "1",
                      "--iters", "1", "--warmup", "0", "--json", out_json, "--markdown", out_md)
    assert result.returncode == 0, result
    with open(out_json, encoding="utf-8") as f:
        rows = json.load(f)
    assert [row["model"] for row in rows] == DIGITS
    with open(out_md, encoding="utf-8") as f:
        markdown = f.read()
    assert "`python tools/benchmark.py --models '*digits*' --batch_size 2" in markdown  # the exact command
    assert "cpus (" in markdown and "load average" in markdown
    assert markdown in result.stdout  # printed as written
    for row in rows:
        assert benchmark.format_row(row) in result.stdout
    assert f"wrote {out_json}" in result.stdout and f"wrote {out_md}" in result.stdout

    result = run_tool(BENCHMARK, "--models", "*digits*", "--batch_size", "-2", "--json", tmp_path / "x.json")
    assert_error(result, "--batch_size -2: expected an integer >= 1")
    assert not (tmp_path / "x.json").exists()
