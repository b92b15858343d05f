"""Per-block thresholds: one value per compression block, from create_model, set_threshold and the config
options threshold / eval_threshold, reaching already compiled graphs."""
import math

import mindspore as ms
import numpy as np
import pytest

from mindppt.config import parse_args, validate_config
from mindppt.engine.build import build_model, describe_threshold, model_kwargs, threshold_setting
from mindppt.errors import ConfigError
from mindppt.models import create_model, inspect_compression

PPT = dict(num_classes=3, r_tokens=3, pp_loc_list=(1, 2, 3))


def images(n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def test_model_takes_one_threshold_per_compression_block():
    model = create_model("vit_digits_patch4_16", threshold=[1e-3, 0.0, math.inf], **PPT)
    assert model.thresholds == pytest.approx([1e-3, 0.0, math.inf])
    assert threshold_setting(model) == pytest.approx([1e-3, 0.0, math.inf])
    model.set_threshold(2e-3)
    assert threshold_setting(model) == pytest.approx(2e-3) and describe_threshold(2e-3) == "0.002"
    with pytest.raises(ValueError, match=r"one value per compression block \(3: blocks \[1, 2, 3\]\), got 2"):
        model.set_threshold([1e-3, 2e-3])
    with pytest.raises(ValueError, match=r"one value per compression block \(3"):
        create_model("vit_digits_patch4_16", threshold=[1e-3], **PPT)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        create_model("vit_digits_patch4_16", threshold=[1e-3, -1.0, 0.0], **PPT)
    assert threshold_setting(create_model("vit_digits_patch4_16", num_classes=3)) is None  # dense


def test_per_block_thresholds_reach_compiled_graphs():
    ms.set_seed(0)
    model = create_model("vit_digits_patch4_16", threshold=0.0, **PPT)
    model.set_train(False)
    x = images()
    before = model(ms.Tensor(x)).asnumpy()  # compiles the plain forward graph
    _, infos = inspect_compression(model, x)  # and the inspector's
    assert not any(info["pooled"].any() for info in infos)
    model.set_threshold([0.0, math.inf, 0.0])  # no rebuild, no recompile
    _, infos = inspect_compression(model, x)
    assert [bool(info["pooled"].all()) for info in infos] == [False, True, False]
    assert not infos[0]["pooled"].any() and not infos[2]["pooled"].any()
    after = model(ms.Tensor(x)).asnumpy()
    fresh = create_model("vit_digits_patch4_16", threshold=[0.0, math.inf, 0.0], **PPT)
    fresh.set_train(False)
    for mine, theirs in zip(fresh.get_parameters(), model.get_parameters()):  # same weights, own thresholds
        if not mine.name.endswith("ppt_threshold"):
            mine.set_data(theirs.data)
    np.testing.assert_allclose(after, fresh(ms.Tensor(x)).asnumpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(before, after)  # pooling block 2 changed the logits


def test_config_threshold_options_take_a_number_or_one_per_block(tmp_path):
    args = parse_args(["--eval_threshold", "1e-3,2e-3,3e-3", "--threshold", "4e-3"])
    assert args.eval_threshold == pytest.approx([1e-3, 2e-3, 3e-3]) and args.threshold == pytest.approx(4e-3)
    assert parse_args(["--threshold", "[1e-3, inf]"]).threshold == [1e-3, math.inf]
    assert validate_config({"threshold": [6e-5, "7e-5", 8e-5]})["threshold"] == pytest.approx([6e-5, 7e-5, 8e-5])
    with pytest.raises(ConfigError, match="threshold.*expected a float in"):
        validate_config({"eval_threshold": [1e-3, -1]})
    with pytest.raises(ConfigError, match="threshold"):
        validate_config({"threshold": "fast"})
    args = parse_args(["--model", "vit_digits_patch4_16", "--num_classes", "3", "--r_tokens", "3", "--pp_loc_list",
                       "1,2,3", "--image_resize", "16", "--eval_threshold", "1e-3,2e-3,3e-3"])
    assert model_kwargs(args, for_eval=True)["threshold"] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert build_model(args, for_eval=True, with_weights=False).thresholds == pytest.approx([1e-3, 2e-3, 3e-3])
    args.eval_threshold = [1e-3, 2e-3]
    with pytest.raises(ConfigError, match=r"cannot build model 'vit_digits_patch4_16': threshold as a list needs "
                                          r"one value per compression block \(3"):
        build_model(args, for_eval=True, with_weights=False)
