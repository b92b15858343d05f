"""tools/export.py: the exported MINDIR gives the Cell's logits on a batch mixing pooled and pruned images;
the side file records what is baked in; formats MindSpore cannot export are one-line errors; tools/benchmark.py
--exported times the graph."""
import json
import os

import mindspore as ms
import numpy as np
import pytest
from deploy_helpers import BATCH, EXPORT, SIZE, make_setup, portable_model
from mindspore import nn
from tool_helpers import assert_error, run_tool

from mindppt.config import parse_args
from mindppt.engine.export import export_model
from mindppt.errors import OutputError
from mindppt.models import inspect_compression

BENCHMARK = os.path.join(os.path.dirname(EXPORT), "benchmark.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(str(tmp_path_factory.mktemp("export")))


def test_mindir_matches_cell_on_mixed_batch(setup, tmp_path):
    prefix = str(tmp_path / "ppt")
    result = run_tool(EXPORT, "-c", setup["config"], "--ckpt_path", setup["ckpt"], "--batch_size", BATCH,
                      "--eval_threshold", repr(setup["threshold"]), "--out", prefix)
    assert result.returncode == 0, result
    assert "MINDIR" in result.stdout and "ppt.json" in result.stdout
    cell = portable_model(threshold=setup["threshold"])
    logits, blocks = inspect_compression(cell, setup["images"])
    assert 0 < blocks[0]["pooled"].sum() < BATCH, blocks[0]["pooled"]  # the batch mixes both policies
    with open(prefix + ".mindir", "rb") as f:
        assert b"MindpptGelu" not in f.read()  # no fused-kernel Custom op: the graph needs no local .so
    graph = nn.GraphCell(ms.load(prefix + ".mindir"))
    exported = graph(ms.Tensor(setup["images"])).asnumpy()
    # same ops, same order: float32 rounding at most
    assert np.abs(exported - logits).max() <= 1e-5 * np.abs(logits).max(), np.abs(exported - logits).max()
    with open(prefix + ".json", encoding="utf-8") as f:
        info = json.load(f)
    assert info["input_shape"] == [BATCH, 3, SIZE, SIZE] and info["model"] == "vit_digits_patch4_16"
    assert info["ppt"]["compression_blocks"] == [1, 2] and info["ppt"]["r_tokens"] == [4, 4]
    assert np.allclose(info["ppt"]["thresholds"], setup["threshold"], rtol=1e-6)
    assert info["class_names"] == ["a_top", "b_left", "c_diag"] and info["fused_cpu_kernels"] is False
    assert info["preprocess"]["mean"] == [127.5, 127.5, 127.5] and info["preprocess"]["image_size"] == SIZE


def test_unsupported_format_names_the_op(setup, tmp_path):
    result = run_tool(EXPORT, "-c", setup["config"], "--ckpt_path", setup["ckpt"], "--batch_size", 2,
                      "--file_format", "ONNX", "--out", tmp_path / "m")
    assert_error(result, "ONNX", "op ")
    assert not list(tmp_path.iterdir())  # nothing half-written
    assert_error(run_tool(EXPORT, "-c", setup["config"], "--out", tmp_path / "m", "--lr", "1"), "--lr")


def test_out_under_a_regular_file_is_one_error_line(setup, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    prefix = tmp_path / "file" / "sub" / "model"
    result = run_tool(EXPORT, "-c", setup["config"], "--batch_size", 1, "--out", prefix)
    assert_error(result, f"{prefix}.mindir", f"{tmp_path / 'file'} is not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert (tmp_path / "file").read_text() == "not a directory"


def test_export_model_checks_both_outputs_before_writing_either(setup, tmp_path):
    (tmp_path / "model.json").mkdir()  # the side file's name is taken by a directory
    args = parse_args(["-c", setup["config"]], tool="export")
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'model.json'}: it is a directory"):
        export_model(args, str(tmp_path / "model"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]  # no .mindir, no temporary file
    assert not list((tmp_path / "model.json").iterdir())


def test_benchmark_times_the_exported_graph_beside_the_cell(tmp_path):
    out = tmp_path / "bench.json"
    result = run_tool(BENCHMARK, "--models", "vit_digits_patch4_16", "ppt_vit_digits_patch4_16", "--image_resize", 16,
                      "--num_classes", 3, "--batch_size", 1, "--exported", "--rounds", 1, "--iters", 1, "--warmup", 0,
                      "--json", out)
    assert result.returncode == 0, result
    with open(out, encoding="utf-8") as f:
        rows = json.load(f)
    assert [r["model"] for r in rows] == ["vit_digits_patch4_16", "vit_digits_patch4_16 [MINDIR]",
                                          "ppt_vit_digits_patch4_16", "ppt_vit_digits_patch4_16 [MINDIR]"]
    assert all(r["img_per_s"] > 0 for r in rows)
