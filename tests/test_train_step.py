"""mindppt.engine.train_step.TrainStep in GRAPH_MODE, on a linear model whose gradient is known in closed
form: what gradient clipping, fixed and dynamic loss scaling (overflow skips the step) and the EMA do to
one optimisation step."""
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from mindppt.engine.ema import EMA
from mindppt.engine.train_step import TrainStep

LR = 0.1
X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
Y = np.array([[10.0]], np.float32)
W0 = np.zeros((4, 1), np.float32)
GRAD = X.T @ (X @ W0 - Y)  # d/dw of 0.5 * |x w - y|^2: norm 54.8
BAD_X = np.array([[np.inf, 0.0, 0.0, 0.0]], np.float32)  # gives non-finite gradients


class Quadratic(nn.Cell):
    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(W0.copy()), name="w")

    def construct(self, x, y):
        d = ops.matmul(x, self.w) - y
        return 0.5 * (d * d).sum()


def make_step(**kwargs):
    net = Quadratic()
    ema = EMA(net.trainable_params(), kwargs.pop("ema_decay")) if "ema_decay" in kwargs else None
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=LR), ema=ema, **kwargs)
    step.set_train(True)
    return step, net


def run(step, x=X):
    return float(step(Tensor(x), Tensor(Y)).asnumpy())


@pytest.mark.parametrize("clip", [0.0, 1.0, 100.0])
def test_clipping_scales_the_gradient_to_the_global_norm(clip):
    step, net = make_step(clip_grad=clip)
    loss = run(step)
    assert loss == pytest.approx(50.0)
    norm = np.linalg.norm(GRAD)
    expected = GRAD * (clip / norm if 0 < clip < norm else 1.0)  # 0 = off; a norm below clip is unchanged
    np.testing.assert_allclose(net.w.asnumpy(), W0 - LR * expected, rtol=1e-5, atol=1e-7)
    if clip == 1.0:
        assert np.linalg.norm(net.w.asnumpy() - W0) == pytest.approx(LR * clip, rel=1e-5)


def test_fixed_loss_scale_unscales_and_skips_an_overflowing_step():
    step, net = make_step(loss_scale_type="fixed", loss_scale=1024.0)
    run(step)
    after_one = W0 - LR * GRAD
    np.testing.assert_allclose(net.w.asnumpy(), after_one, rtol=1e-5)  # the scale is taken out again
    w1 = net.w.asnumpy()
    run(step, BAD_X)
    np.testing.assert_array_equal(net.w.asnumpy(), w1)  # skipped: not a bit changed
    assert float(step.scale_sense.asnumpy()) == 1024.0  # a fixed scale stays


def test_dynamic_loss_scale_halves_on_overflow_and_grows_back_and_ema_follows_applied_steps():
    step, net = make_step(loss_scale_type="dynamic", loss_scale=1024.0, scale_window=2, clip_grad=1.0,
                          ema_decay=0.5)
    average = step.ema.averages[0]
    run(step, BAD_X)
    assert float(step.scale_sense.asnumpy()) == 512.0
    np.testing.assert_array_equal(net.w.asnumpy(), W0)  # the overflowing step changed nothing
    np.testing.assert_array_equal(average.asnumpy(), W0)  # nor the average
    w1 = W0 - LR * GRAD / np.linalg.norm(GRAD)  # unscaled, then clipped to norm 1
    run(step)
    np.testing.assert_allclose(net.w.asnumpy(), w1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(average.asnumpy(), 0.5 * W0 + 0.5 * w1, rtol=1e-5, atol=1e-7)
    assert float(step.scale_sense.asnumpy()) == 512.0
    run(step)
    assert float(step.scale_sense.asnumpy()) == 1024.0  # 2 clean steps (scale_window): doubled


def test_bad_loss_scale_type_is_refused():
    with pytest.raises(ValueError, match="none, fixed or dynamic"):
        make_step(loss_scale_type="static")

