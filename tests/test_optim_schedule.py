"""mindppt.engine.optim and mindppt.engine.schedule: parameter groups, the per-step lr list, and real
optimizer steps in GRAPH_MODE on CPU (TrainOneStepCell)."""
import math
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from mindppt.engine.optim import create_optimizer, param_groups
from mindppt.engine.schedule import create_lr_schedule, recipe_lr_values


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


class TinyViTish(nn.Cell):
    """Dense + LayerNorm + the ViT parameters that must not decay (pos_embed, cls_token)."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.cls_token = Parameter(Tensor(np.full((1, 1, 4), 0.5, np.float32)), name="cls_token")
        self.pos_embed = Parameter(Tensor(np.full((1, 2, 4), 0.25, np.float32)), name="pos_embed")
        self.fc = nn.Dense(4, 4, weight_init=Tensor(rng.uniform(-0.5, 0.5, (4, 4)).astype(np.float32)))
        self.norm = nn.LayerNorm((4,))
        self.head = nn.Dense(4, 3, weight_init=Tensor(rng.uniform(-0.5, 0.5, (3, 4)).astype(np.float32)))

    def construct(self, x):  # x: (B, 1, 4)
        tokens = ops.concat((ops.broadcast_to(self.cls_token, (x.shape[0], 1, 4)), x), axis=1)
        tokens = tokens + self.pos_embed
        return self.head(self.norm(self.fc(tokens)).mean(axis=1))


class ZeroLoss(nn.Cell):
    """A loss whose gradient is exactly zero for every parameter."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)  # keep the parameter names (as nn.WithLossCell does)
        self.net = net

    def construct(self, x, y):
        return (self.net(x) * 0.0).sum() + (y * 0.0).sum()


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return (Tensor(rng.standard_normal((2, 1, 4)).astype(np.float32)),
            Tensor(rng.standard_normal((2, 3)).astype(np.float32)))


def snapshot(net):
    return {p.name: p.asnumpy().astype(np.float64) for p in net.trainable_params()}


DECAYED = {"fc.weight", "head.weight"}


# ---------------------------------------------------------------------------- parameter groups
def test_param_groups_split():
    net = TinyViTish()
    groups = param_groups(net.trainable_params(), 0.05)
    decay = {p.name for p in groups[0]["params"]}
    no_decay = {p.name for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert decay == DECAYED
    assert no_decay == {"cls_token", "pos_embed", "fc.bias", "norm.gamma", "norm.beta", "head.bias"}
    assert [p.name for p in groups[-1]["order_params"]] == [p.name for p in net.trainable_params()]


def test_param_groups_without_filter_decay_everything():
    net = TinyViTish()
    groups = param_groups(net.trainable_params(), 0.05, weight_decay_filter="disable")
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.05
    assert len(groups[0]["params"]) == len(net.trainable_params())


def test_auto_filter_exempts_only_the_norms():
    """mindcv's ``auto``: MindSpore's own default filter, the norm layers' weights and biases."""
    net = TinyViTish()
    groups = param_groups(net.trainable_params(), 0.05, weight_decay_filter="auto")
    assert {p.name for p in groups[1]["params"]} == {"norm.gamma", "norm.beta"}
    assert {p.name for p in groups[0]["params"]} == DECAYED | {"cls_token", "pos_embed", "fc.bias", "head.bias"}
    with pytest.raises(ValueError, match="norm_and_bias"):
        param_groups(net.trainable_params(), 0.05, weight_decay_filter="bias")


def test_timm_style_names_are_filtered():
    """timm names (norm1.weight / norm1.bias) are 1-D and filtered by shape, biases by name."""
    params = [Parameter(Tensor(np.ones(s, np.float32)), name=n) for n, s in [
        ("blocks.0.norm1.weight", (4,)), ("blocks.0.attn.qkv.weight", (12, 4)),
        ("blocks.0.attn.qkv.bias", (12,)), ("patch_embed.proj.weight", (4, 3, 2, 2)),
        ("pos_embed", (1, 5, 4)), ("cls_token", (1, 1, 4))]]
    groups = param_groups(params, 0.05)
    assert {p.name for p in groups[0]["params"]} == {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight"}


# ---------------------------------------------------------------------------- schedule
def test_warmup_then_cosine_values():
    base, min_lr, warm = 1e-3, 1e-5, 1e-6
    lr = create_lr_schedule(base_lr=base, min_lr=min_lr, warmup_factor=warm / base, warmup_epochs=2, epochs=10,
                            steps_per_epoch=5)
    assert lr.dtype == np.float32 and lr.shape == (50,)
    assert lr[0] == pytest.approx(warm)
    assert lr[5] == pytest.approx(warm + (base - warm) * 0.5, rel=1e-6)  # half-way through warmup
    assert lr[10] == pytest.approx(base)  # first step after warmup: the peak
    assert lr[30] == pytest.approx((base + min_lr) / 2, rel=1e-6)  # half-way through the cosine
    last = min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * 39 / 40))
    assert lr[49] == pytest.approx(last, rel=1e-5) and lr[49] > min_lr
    assert np.all(np.diff(lr[:11]) > 0) and np.all(np.diff(lr[10:]) < 0)


def test_no_warmup_and_constant():
    lr = create_lr_schedule(base_lr=0.1, min_lr=0.0, warmup_factor=0.0, warmup_epochs=0, epochs=2,
                            steps_per_epoch=3)
    assert lr[0] == pytest.approx(0.1) and lr[3] == pytest.approx(0.05)
    lr = create_lr_schedule(base_lr=0.1, min_lr=0.0, warmup_factor=0.0, warmup_epochs=1, epochs=3,
                            steps_per_epoch=2, scheduler="constant")
    np.testing.assert_allclose(lr, [0.0, 0.05, 0.1, 0.1, 0.1, 0.1], rtol=1e-6)


def test_decay_epochs_then_min_lr_and_epoch_stairs():
    """mindcv's cosine_decay over decay_epochs (then min_lr), and lr_epoch_stair (one value per epoch)."""
    lr = create_lr_schedule(base_lr=1.0, min_lr=0.1, warmup_factor=0.5, warmup_epochs=1, epochs=6,
                            steps_per_epoch=2, decay_epochs=3)
    assert lr[0] == pytest.approx(0.5) and lr[1] == pytest.approx(0.75) and lr[2] == pytest.approx(1.0)
    assert lr[5] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 6)), rel=1e-6)
    np.testing.assert_allclose(lr[8:], 0.1, rtol=1e-6)  # decay over after 1 + 3 epochs
    stairs = create_lr_schedule(base_lr=1.0, min_lr=0.1, warmup_factor=0.5, warmup_epochs=1, epochs=6,
                                steps_per_epoch=2, decay_epochs=3, lr_epoch_stair=True)
    np.testing.assert_allclose(stairs, np.repeat(lr[::2], 2), rtol=1e-6)
    with pytest.raises(ValueError, match="decay_epochs"):
        create_lr_schedule(base_lr=1.0, min_lr=0.1, warmup_factor=0.0, warmup_epochs=2, epochs=6, steps_per_epoch=2,
                           decay_epochs=5)


def test_fractional_warmup_and_errors():
    lr = create_lr_schedule(base_lr=1.0, min_lr=0.0, warmup_factor=0.0, warmup_epochs=0.5, epochs=1,
                            steps_per_epoch=4)
    assert lr[0] == 0.0 and lr[1] == pytest.approx(0.5) and lr[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        create_lr_schedule(base_lr=1.0, min_lr=0.0, warmup_factor=0.0, warmup_epochs=3, epochs=2, steps_per_epoch=1)
    with pytest.raises(ValueError, match="scheduler"):
        create_lr_schedule(base_lr=1.0, min_lr=0.0, warmup_factor=0.0, warmup_epochs=0, epochs=2, steps_per_epoch=1,
                           scheduler="step")


# ---------------------------------------------------------------------------- optimizer steps
@pytest.mark.parametrize("bias_correction", [True, False])
def test_zero_gradient_step_only_decays_the_decay_group(bias_correction):
    """With zero gradients AdamW's update is pure weight decay: w *= 1 - lr * wd on the decayed
    weights; biases, norms, pos_embed and cls_token must not move at all."""
    net = TinyViTish()
    lr, wd = 0.1, 0.5
    opt = create_optimizer(net.trainable_params(), lr=[lr, lr], weight_decay=wd,
                           bias_correction=bias_correction)
    step = nn.TrainOneStepCell(ZeroLoss(net), opt)
    before = snapshot(net)
    step(*batch())
    after = snapshot(net)
    for name, value in before.items():
        if name in DECAYED:
            np.testing.assert_allclose(after[name], value * (1 - lr * wd), rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_adamw_steps_match_pytorch_adamw_reference():
    """Three GRAPH_MODE steps with a per-step lr list equal PyTorch's AdamW (bias-corrected, decoupled
    decay), written out in numpy, except that eps acts as eps / sqrt(1 - beta2^t) (documented; it only
    shows for gradient elements near eps); every parameter moves."""
    net = TinyViTish()
    loss_net = nn.WithLossCell(net, nn.MSELoss())
    params = net.trainable_params()
    lrs = [1e-2, 5e-3, 2e-3]
    wd, (b1, b2), eps = 0.05, (0.9, 0.999), 1e-8
    opt = create_optimizer(params, lr=np.array(lrs, np.float32), weight_decay=wd, betas=(b1, b2), eps=eps)
    step = nn.TrainOneStepCell(loss_net, opt)
    grad_fn = ms.grad(loss_net, grad_position=None, weights=ms.ParameterTuple(params))
    ref = snapshot(net)
    start = {k: v.copy() for k, v in ref.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(v) for k, v in ref.items()}
    for t, lr in enumerate(lrs, start=1):
        x, y = batch(t)
        grads = {p.name: g.asnumpy().astype(np.float64) for p, g in zip(params, grad_fn(x, y))}
        step(x, y)
        for name in ref:
            decay = wd if name in DECAYED else 0.0
            ref[name] *= 1 - lr * decay
            m[name] = b1 * m[name] + (1 - b1) * grads[name]
            v[name] = b2 * v[name] + (1 - b2) * grads[name] ** 2
            m_hat, v_hat = m[name] / (1 - b1 ** t), v[name] / (1 - b2 ** t)
            ref[name] -= lr * m_hat / (np.sqrt(v_hat) + eps / math.sqrt(1 - b2 ** t))
        now = snapshot(net)
        for name in ref:
            np.testing.assert_allclose(now[name], ref[name], rtol=0, atol=1e-6, err_msg=f"{name} step {t}")
    assert int(opt.global_step.asnumpy()[0]) == 3
    for name, value in snapshot(net).items():
        assert np.abs(value - start[name]).max() > 1e-4, name


@pytest.mark.parametrize("opt_name", ["sgd", "momentum"])
def test_sgd_and_momentum_step(opt_name):
    net = TinyViTish()
    opt = create_optimizer(net.trainable_params(), opt=opt_name, lr=0.1, weight_decay=1e-4)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), opt)
    before = snapshot(net)
    step(*batch())
    after = snapshot(net)
    assert all(np.abs(after[k] - before[k]).max() > 0 for k in before)


def test_lr_past_the_end_of_the_list_holds_the_last_value():
    net = TinyViTish()
    opt = create_optimizer(net.trainable_params(), lr=[0.1, 0.0], weight_decay=0.5)
    step = nn.TrainOneStepCell(ZeroLoss(net), opt)
    step(*batch())
    before = snapshot(net)
    for _ in range(2):  # steps 1 and 2: lr 0.0 (the list has two entries)
        step(*batch())
    after = snapshot(net)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_bad_arguments():
    net = TinyViTish()
    with pytest.raises(ValueError, match="unknown optimizer"):
        create_optimizer(net.trainable_params(), opt="lamb")
    with pytest.raises(ValueError, match="no parameters"):
        create_optimizer([], lr=0.1)
    with pytest.raises(ValueError):
        create_optimizer(net.trainable_params(), lr=[0.1, -1.0])


def test_recipe_lr_values_scale_the_peak_to_the_global_batch():
    """A recipe's table (what the trainer and the benchmark's training step use): the peak lr of
    lr_per_512 scaled to batch_size x devices, the recipe's warmup and schedule, per step."""
    recipe = SimpleNamespace(lr=None, lr_per_512=5e-4, batch_size=64, min_lr=1e-5, warmup_factor=1e-6 / 1.25e-4,
                             warmup_epochs=1, epoch_size=4, scheduler="cosine_decay", decay_epochs=None,
                             lr_epoch_stair=False)
    lr = recipe_lr_values(recipe, steps_per_epoch=3, device_num=2)
    assert lr.shape == (12,) and lr[0] == pytest.approx(1e-6)
    assert lr[3] == pytest.approx(5e-4 * 64 * 2 / 512) == lr.max()  # first step after warmup: the peak
    recipe.lr = 1e-3  # an explicit lr is taken as it is
    assert recipe_lr_values(recipe).max() == pytest.approx(1e-3) and recipe_lr_values(recipe).shape == (4,)
