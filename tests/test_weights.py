"""mindppt.models.weights, the one weight loader: name and shape checks of convert_state_dict,
load_weights / create_model(checkpoint_path=...) for every format, training checkpoints of tools/train.py
(their model weights, or their EMA weights with ema=True), and run-time settings (the PPT threshold) that
no checkpoint overrides."""
import warnings

import mindspore as ms
import numpy as np
import pytest
from checkpoint_helpers import (
    TINY,
    assert_params_equal,
    model_params,
    model_shapes,
    random_state,
    to_torch,
    torch_save,
    write_jax_npz,
    write_pth,
    write_safetensors,
)

from mindppt.errors import CheckpointError
from mindppt.models import create_model, inspect_compression
from mindppt.models.weights import convert_state_dict, load_weights

DIGITS = "ppt_vit_digits_patch4_16"


@pytest.fixture(scope="module")
def tiny_state():
    return random_state(model_shapes(TINY), seed=0)


@pytest.fixture(scope="module")
def tiny_model():
    return create_model(TINY)


# ---------------------------------------------------------------------------------------------------
# every format through create_model(checkpoint_path=...)
# ---------------------------------------------------------------------------------------------------

def _write_ckpt(state, path):
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in state.items()], str(path))


@pytest.mark.parametrize("name,writer", [("deit_tiny.pth", write_pth), ("model.safetensors", write_safetensors),
                                         ("ViT-Ti_16.npz", write_jax_npz), ("deit_tiny.ckpt", _write_ckpt)])
def test_create_model_loads_every_format_exactly(tmp_path, tiny_state, name, writer):
    path = tmp_path / name
    writer(tiny_state, path)
    assert_params_equal(create_model(TINY, checkpoint_path=str(path)), tiny_state)
    # the PPT variant of the same size takes the same weights; its threshold stays the configured one
    ppt = create_model("ppt_deit_tiny_patch16_224", threshold=3e-5, checkpoint_path=str(path))
    params = {k: v for k, v in model_params(ppt).items() if not k.endswith("ppt_threshold")}
    assert set(params) == set(tiny_state)
    for key, value in tiny_state.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)
    assert [blk.compression.threshold for blk in ppt.blocks if blk.compression is not None] == \
        pytest.approx([3e-5] * 3)


def test_load_weights_into_an_existing_model(tmp_path, tiny_state):
    path = tmp_path / "w.safetensors"
    write_safetensors(tiny_state, path)
    net = create_model(TINY)
    assert load_weights(net, path, model_name=TINY) == "weights"
    assert_params_equal(net, tiny_state)


def test_create_model_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="tools/convert_weights.py"):
        create_model(TINY, pretrained=True)
    with pytest.raises(ValueError, match="ema=True selects the EMA weights of a checkpoint: pass checkpoint_path"):
        create_model(TINY, ema=True)


# ---------------------------------------------------------------------------------------------------
# conversion against a model: names, shapes, heads, distilled checkpoints
# ---------------------------------------------------------------------------------------------------

def test_small_checkpoint_into_tiny_model(tmp_path, tiny_model):
    small = random_state(model_shapes("deit_small_patch16_224"), seed=3)
    path = tmp_path / "deit_small.pth"
    torch_save({"model": to_torch(small)}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(tiny_model, path, model_name=TINY)
    msg = str(err.value)
    assert "deit_small.pth" in msg and TINY in msg
    assert "shape mismatch" in msg
    assert "blocks.0.attn.qkv.weight: file (1152, 384) vs model (576, 192)" in msg
    assert "embed dim is 384" in msg
    assert sorted(err.value.mismatched) == sorted(k for k in small if k != "head.bias")  # (1000,) fits


def test_unexpected_key_is_named(tiny_state, tiny_model):
    state = dict(tiny_state, **{"blocks.0.attn.extra_scale": np.ones(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected \[blocks\.0\.attn\.extra_scale\]") as err:
        convert_state_dict(state, tiny_model, source="x.pth")
    assert "missing" not in str(err.value) and err.value.unexpected == ["blocks.0.attn.extra_scale"]


def test_missing_key_is_named(tiny_state, tiny_model):
    state = {k: v for k, v in tiny_state.items() if k != "blocks.3.mlp.fc1.bias"}
    with pytest.raises(CheckpointError, match=r"x\.pth does not match .*missing \[blocks\.3\.mlp\.fc1\.bias\]"):
        convert_state_dict(state, tiny_model, source="x.pth")


def test_non_strict_warns_instead(tiny_state, tiny_model):
    state = {k: v for k, v in tiny_state.items() if k != "norm.bias"}
    state["extra"] = np.zeros(1, np.float32)
    with pytest.warns(UserWarning, match=r"missing \[norm\.bias\].*unexpected \[extra\]"):
        out = convert_state_dict(state, tiny_model, strict=False)
    assert "norm.bias" not in out and "extra" not in out


def test_distilled_checkpoint_is_refused(tiny_state, tiny_model):
    state = dict(tiny_state)
    state["dist_token"] = np.zeros((1, 1, 192), np.float32)
    state["head_dist.weight"] = np.zeros((1000, 192), np.float32)
    with pytest.raises(CheckpointError, match="distilled"):
        convert_state_dict(state, tiny_model, source="deit_tiny_distilled.pth")


def test_different_num_classes_drops_head_with_warning(tmp_path, tiny_state):
    path = tmp_path / "tiny.safetensors"
    from safetensors.numpy import save_file

    save_file(tiny_state, str(path))
    with pytest.warns(UserWarning, match=r"head\.weight \(1000, 192\) vs model \(10, 192\).*dropping"):
        net = create_model(TINY, num_classes=10, checkpoint_path=str(path))
    params = model_params(net)
    assert params["head.weight"].shape == (10, 192)
    for k, v in tiny_state.items():
        if not k.startswith("head."):
            np.testing.assert_array_equal(params[k], v, err_msg=k)


def test_warnings_module_is_clean_on_exact_match(tiny_state, tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = convert_state_dict(tiny_state, tiny_model)
    assert list(out) == [p.name for _, p in tiny_model.parameters_and_names()]


# ---------------------------------------------------------------------------------------------------
# training checkpoints of tools/train.py
# ---------------------------------------------------------------------------------------------------

def _write_train_checkpoint(path, *, ema):
    """A training checkpoint as the trainer writes it (the recipe's training step, saved with the run
    counters) of the digits PPT model trained at threshold 0.5. With ``ema`` the averages are set apart
    from the weights (+1), so a loader that mixes them up is caught. Returns (weights, averages)."""
    from mindppt.engine.checkpointing import RunState, save_train_state
    from mindppt.engine.cli import parse_cli as parse_args
    from mindppt.engine.trainer import build_train_step

    model = create_model(DIGITS, num_classes=3, threshold=0.5)
    args = parse_args(["--ema", "true", "--ema_decay", "0.5"] if ema else [])
    step = build_train_step(model, args, np.full(4, 1e-3, np.float32))
    weights = {p.name: p.asnumpy() for p in model.trainable_params()}
    averages = None
    if ema:
        for average in step.ema.averages:
            average.set_data(ms.Tensor(average.asnumpy() + 1.0))
        averages = {name: a.asnumpy() for name, a in step.ema.state().items()}
    state = RunState(epoch_size=2, steps_per_epoch=4, images_per_step=8, lr_values=np.full(8, 1e-3))
    state.epoch, state.global_step = 1, 4
    save_train_state(step, str(path), model_name=DIGITS, meta=state.meta())
    return weights, averages


@pytest.fixture(scope="module")
def train_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_ckpt")
    with_ema, without_ema = d / "ema_last.ckpt", d / "last.ckpt"
    return {"ema": (with_ema, *_write_train_checkpoint(with_ema, ema=True)),
            "plain": (without_ema, *_write_train_checkpoint(without_ema, ema=False))}


def _thresholds(model):
    return [blk.compression.threshold for blk in model.blocks if blk.compression is not None]


def test_training_checkpoint_gives_its_model_weights_or_its_ema_weights(train_checkpoints):
    path, weights, averages = train_checkpoints["ema"]
    assert set(averages) == set(weights) and not np.allclose(averages["head.weight"], weights["head.weight"])
    for ema, expected in ((False, weights), (True, averages)):
        net = create_model(DIGITS, num_classes=3, threshold=1e-3, checkpoint_path=str(path), ema=ema)
        params = {p.name: p.asnumpy() for p in net.trainable_params()}
        assert set(params) == set(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(params[name], value, err_msg=f"ema={ema} {name}")
        # the threshold is a run-time setting: the configured 1e-3, not the 0.5 stored in the file
        assert _thresholds(net) == pytest.approx([1e-3] * 3)
    # the layout: optimizer state, loss scale, counters and averages are there but are not weights
    stored = ms.load_checkpoint(str(path))
    assert {"global_step", "scale_sense", "meta_epoch", "adam_m.head.weight", "ema.head.weight"} <= set(stored)


def test_ema_weights_need_a_training_checkpoint_with_ema(train_checkpoints, tmp_path):
    path, weights, _ = train_checkpoints["plain"]
    with pytest.raises(CheckpointError, match="the checkpoint holds no EMA weights"):
        create_model(DIGITS, num_classes=3, checkpoint_path=str(path), ema=True)
    plain = tmp_path / "plain_weights.ckpt"
    _write_ckpt(weights, plain)
    with pytest.raises(CheckpointError, match=rf"ema=true loads the EMA weights of a training checkpoint, "
                                              rf"but {plain} holds plain weights"):
        create_model(DIGITS, num_classes=3, checkpoint_path=str(plain), ema=True)
    # without ema the same plain file loads
    net = create_model(DIGITS, num_classes=3, checkpoint_path=str(plain))
    np.testing.assert_array_equal(net.head.weight.asnumpy(), weights["head.weight"])


def test_a_saved_threshold_never_overrides_the_configured_one(tmp_path):
    """A plain .ckpt of a PPT model holds its threshold parameter too; loading keeps the model's own."""
    trained = create_model(DIGITS, num_classes=3, threshold=0.5)
    path = tmp_path / "with_threshold.ckpt"
    ms.save_checkpoint(trained, str(path))
    assert any(k.endswith("ppt_threshold") for k in ms.load_checkpoint(str(path)))
    net = create_model(DIGITS, num_classes=3, threshold=2e-3, checkpoint_path=str(path))
    assert _thresholds(net) == pytest.approx([2e-3] * 3)
    np.testing.assert_array_equal(net.head.weight.asnumpy(), trained.head.weight.asnumpy())


def test_a_model_saved_after_inspection_loads_strictly(tmp_path):
    """inspect_compression wraps the model in a Cell; the wrapper must not rename the model's parameters
    (MindSpore prefixes a child's parameter names by default), or a checkpoint saved afterwards would
    hold `model.cls_token` and no longer load into the same model."""
    ms.set_seed(0)
    model = create_model("ppt_vit_digits_patch4_16", num_classes=3)
    names = [p.name for p in model.get_parameters()]
    inspect_compression(model, np.zeros((2, 3, 16, 16), np.float32))
    assert [p.name for p in model.get_parameters()] == names
    path = str(tmp_path / "after_inspection.ckpt")
    ms.save_checkpoint(model, path)
    reloaded = create_model("ppt_vit_digits_patch4_16", num_classes=3, checkpoint_path=path)
    np.testing.assert_array_equal(reloaded.cls_token.asnumpy(), model.cls_token.asnumpy())
