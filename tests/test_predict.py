"""tools/predict.py: top-5 with the evaluation transforms and class names, from a checkpoint and from an
exported graph; bad images reported and skipped; the shipped ImageNet class names."""
import json
import os

import mindspore as ms
import numpy as np
import pytest
from deploy_helpers import EXPORT, PREDICT, make_setup
from tool_helpers import assert_error, run_tool

from mindppt.data.class_names import IMAGENET_CLASSES_FILE, resolve_class_names
from mindppt.engine.build import build_eval_model, create_eval_loader
from mindppt.engine.cli import parse_cli as parse_args
from mindppt.errors import ConfigError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    s = make_setup(str(root))
    s["bad"] = str(root / "broken.jpg")
    with open(s["bad"], "wb") as f:
        f.write(b"not a jpeg")
    return s


def _probs(predictions):
    """Per image, the probabilities of the top classes in class-index order."""
    return np.array([[c["prob"] for c in sorted(p["top"], key=lambda c: c["index"])] for p in predictions])


def reference_probs(s):
    """Softmax of the Cell's logits on the evaluation loader (the data pipeline's own transforms)."""
    args = parse_args(["-c", s["config"], "--ckpt_path", s["ckpt"], "--batch_size", "6"], tool="eval")
    model, _ = build_eval_model(args)
    loader, _ = create_eval_loader(args)
    images = next(loader.create_dict_iterator(output_numpy=True))["image"]
    logits = model(ms.Tensor(images)).asnumpy()
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_predict_checkpoint_and_mindir(setup, tmp_path):
    s = setup
    out, png = tmp_path / "pred.json", tmp_path / "tokens.png"
    result = run_tool(PREDICT, "-c", s["config"], "--ckpt_path", s["ckpt"], "--images", os.path.join(s["data"], "val"),
                      s["bad"], "--json", out, "--show_tokens", png)
    assert result.returncode == 0, result
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr  # reported, then skipped
    with open(out, encoding="utf-8") as f:
        preds = json.load(f)
    assert [os.path.basename(os.path.dirname(p["image"])) for p in preds] == ["a_top"] * 2 + ["b_left"] * 2 + \
        ["c_diag"] * 2
    assert all(len(p["top"]) == 3 and {c["name"] for c in p["top"]} == {"a_top", "b_left", "c_diag"} for p in preds)
    probs = _probs(preds)
    np.testing.assert_allclose(probs, reference_probs(s), atol=1e-5)
    assert png.stat().st_size > 0

    prefix = str(tmp_path / "graph")
    assert run_tool(EXPORT, "-c", s["config"], "--ckpt_path", s["ckpt"], "--batch_size", 4, "--out",
                    prefix).returncode == 0
    result = run_tool(PREDICT, "--mindir", prefix, "--images", os.path.join(s["data"], "val"), "--json")
    assert result.returncode == 0, result
    graph_preds = json.loads(result.stdout)
    graph_probs = _probs(graph_preds)
    # the exported graph uses the portable GELU: compared with the checkpoint on the same ops, so no rounding
    # difference of the fused kernel (other on every ISA level) can flip a near-tied token decision
    result = run_tool(PREDICT, "-c", s["config"], "--ckpt_path", s["ckpt"], "--images", os.path.join(s["data"], "val"),
                      "--json", env={"MINDPPT_FUSED_CPU_KERNELS": "0"})
    assert result.returncode == 0, result
    portable = json.loads(result.stdout)
    portable_probs = _probs(portable)
    np.testing.assert_allclose(graph_probs, portable_probs, atol=1e-5)
    assert [c["name"] for c in graph_preds[0]["top"]] == [c["name"] for c in preds[0]["top"]]


def test_predict_errors(setup, tmp_path):
    assert_error(run_tool(PREDICT, "-c", setup["config"], "--ckpt_path", setup["ckpt"], "--images",
                          tmp_path / "missing.jpg"), "missing.jpg")
    assert_error(run_tool(PREDICT, "-c", setup["config"], "--ckpt_path", setup["ckpt"], "--images", setup["bad"]),
                 "no readable images")
    assert_error(run_tool(PREDICT, "--mindir", tmp_path / "none", "--images", setup["bad"]), "side file")
    assert_error(run_tool(PREDICT, "--mindir", tmp_path / "none", "--images", setup["bad"], "--ckpt_path",
                          setup["ckpt"], "--eval_threshold", "1e-3"), "--ckpt_path, --eval_threshold would do nothing")


def test_imagenet_class_names():
    names, source = resolve_class_names(1000)
    assert len(names) == 1000 and names[0] == "tench, Tinca tinca" and "ImageNet" in source
    assert names[999].startswith("toilet tissue")
    with open(IMAGENET_CLASSES_FILE, encoding="utf-8") as f:
        header = f.readline()
    assert header.startswith("# ImageNet-1k") and "Source: timm" in header


def test_class_index_files(tmp_path):
    (tmp_path / "names.txt").write_text("# header\ncat\ndog\n", encoding="utf-8")
    (tmp_path / "names.json").write_text('{"1": ["n2", "dog"], "0": ["n1", "cat"]}', encoding="utf-8")
    for name in ("names.txt", "names.json"):
        assert resolve_class_names(2, str(tmp_path / name)) == (["cat", "dog"], str(tmp_path / name))
    with pytest.raises(ConfigError, match="3 classes"):
        resolve_class_names(3, str(tmp_path / "names.txt"))
