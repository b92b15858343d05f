"""Optimizer factory (mindcv's ``create_optimizer``) with timm's no-weight-decay parameter groups.

``adamw`` is ``mindspore.nn.AdamWeightDecay`` (decoupled weight decay, ``w -= lr * (m / (sqrt(v) + eps)
+ wd * w)``). It is used rather than ``mindspore.experimental.optim.AdamW`` / ``mindspore.mint.optim.AdamW``
because those are not ``nn.Optimizer`` subclasses: ``mindspore.train.Model`` rejects them (checked with
MindSpore 2.10, GRAPH_MODE, CPU) and they take their learning rate from Python-side schedulers instead of
a per-step list the graph indexes with the optimizer's ``global_step``.

``nn.AdamWeightDecay`` has no Adam bias correction (PyTorch's AdamW, which DeiT and PPT were trained
with, has). Without it the first updates are several times larger than PyTorch's (about 3x at step 1,
6.5x at step 10, 1.3x at step 1000 with betas 0.9/0.999). With ``bias_correction=True`` (the default)
the learning rate is multiplied by ``c_t = sqrt(1 - beta2^t) / (1 - beta1^t)`` inside the graph
(:class:`AdamBiasCorrectedLR`) and the weight decay of the decayed group divided by ``c_t`` (a dynamic
weight decay), which reproduces PyTorch's AdamW step, ``w -= lr * wd * w + lr * m_hat / (sqrt(v_hat) +
eps')``, with ``eps' = eps / sqrt(1 - beta2^t)`` (tested to 1e-7 in fp32). eps cannot be corrected
(it is a constant of the fused kernel): eps' is 32x eps at step 1, 3x at step 100, 1.3x at step 1000,
which only changes updates of gradient elements within ~100x of eps (1e-8) during those steps.
``bias_correction=False`` gives MindSpore's plain AdamWeightDecay.
The step ``t`` is the optimizer's ``global_step`` parameter, saved in checkpoints, so resuming keeps it.

Loss scaling is not the optimizer's job here: :class:`~.train_step.TrainStep` scales the loss, unscales
the gradients and skips steps with non-finite gradients (fixed or dynamic scale) on every backend, so
``nn.AdamWeightDecay`` sees plain gradients.
"""
from collections.abc import Iterable

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.nn.learning_rate_schedule import LearningRateSchedule

__all__ = ["create_optimizer", "param_groups", "AdamBiasCorrectedLR", "NO_WEIGHT_DECAY"]

# timm's VisionTransformer.no_weight_decay(), matched against the last component of a parameter name.
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "dist_token")


def _leaf(name):
    return name.rsplit(".", 1)[-1]


WEIGHT_DECAY_FILTERS = ("disable", "auto", "norm_and_bias")


def _is_norm(param):
    return len(param.shape) <= 1 and ("norm" in param.name or _leaf(param.name) in ("gamma", "beta"))


def _skip_decay(param, weight_decay_filter, no_weight_decay):
    if weight_decay_filter == "auto":
        return _is_norm(param)
    return len(param.shape) <= 1 or _leaf(param.name).endswith("bias") or _leaf(param.name) in no_weight_decay


def param_groups(params, weight_decay, weight_decay_filter="norm_and_bias", no_weight_decay=NO_WEIGHT_DECAY):
    """MindSpore group params: ``weight_decay`` for the weights and 0 for the parameters mindcv's
    ``weight_decay_filter`` exempts: ``disable`` none; ``auto`` the norm layers' (MindSpore's own default
    filter, by layer rather than by its gamma/beta names); ``norm_and_bias`` biases, 1-D parameters (norm
    weights) and the model's ``no_weight_decay`` names (timm's: position embedding, class and
    distillation tokens). The optimizer keeps the original parameter order (``order_params``)."""
    params = list(params)
    if not params:
        raise ValueError("create_optimizer: no parameters to optimize")
    if weight_decay_filter not in WEIGHT_DECAY_FILTERS:
        raise ValueError(f"weight_decay_filter must be one of {', '.join(WEIGHT_DECAY_FILTERS)}, "
                         f"got {weight_decay_filter!r}")
    if weight_decay_filter == "disable" or weight_decay == 0:
        # An explicit group, because ungrouped nn optimizers skip names containing 'beta'/'gamma'.
        return [{"params": params, "weight_decay": float(weight_decay)}]
    decay = [p for p in params if not _skip_decay(p, weight_decay_filter, no_weight_decay)]
    no_decay = [p for p in params if _skip_decay(p, weight_decay_filter, no_weight_decay)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay)})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    groups.append({"order_params": params})
    return groups


class _StepTable(LearningRateSchedule):
    """lr[global_step], holding the last value once the table is exhausted."""

    def __init__(self, values):
        super().__init__()
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if values.size == 0:
            raise ValueError("learning-rate list is empty")
        self.values = Tensor(values)
        self.last = Tensor(values.size - 1, ms.int32)

    def construct(self, global_step):
        step = ops.minimum(global_step.reshape(()), self.last)
        return ops.gather(self.values, step, 0)


def _adam_correction(global_step, beta1, beta2):
    t = ops.cast(global_step.reshape(()), ms.float32) + 1.0
    return ops.sqrt(1.0 - ops.pow(beta2, t)) / (1.0 - ops.pow(beta1, t))


class _UncorrectedDecay(nn.Cell):
    """Weight decay divided by the bias correction folded into the lr, so ``lr * wd`` stays exact."""

    def __init__(self, weight_decay, beta1, beta2):
        super().__init__()
        self.weight_decay = float(weight_decay)
        self.beta1 = Tensor(beta1, ms.float32)
        self.beta2 = Tensor(beta2, ms.float32)

    def construct(self, global_step):
        return self.weight_decay / _adam_correction(global_step, self.beta1, self.beta2)


class AdamBiasCorrectedLR(LearningRateSchedule):
    """``lr(step) * sqrt(1 - beta2^t) / (1 - beta1^t)`` with ``t = step + 1`` (Adam's bias correction
    folded into the learning rate). ``learning_rate``: a float, a per-step sequence/array/1-D Tensor,
    or a LearningRateSchedule."""

    def __init__(self, learning_rate, beta1=0.9, beta2=0.999):
        super().__init__()
        if isinstance(learning_rate, LearningRateSchedule):
            self.schedule = learning_rate
        else:
            if isinstance(learning_rate, Tensor):
                learning_rate = learning_rate.asnumpy()
            self.schedule = _StepTable(learning_rate)
        self.beta1 = Tensor(beta1, ms.float32)
        self.beta2 = Tensor(beta2, ms.float32)

    def construct(self, global_step):
        return self.schedule(global_step).reshape(()) * _adam_correction(global_step, self.beta1, self.beta2)


def _check_lr(lr):
    if isinstance(lr, LearningRateSchedule):
        return lr
    if isinstance(lr, Tensor):
        lr = lr.asnumpy()
        if lr.ndim == 0:
            return _check_lr(float(lr))
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        return float(lr)
    if isinstance(lr, (np.ndarray, Iterable)) and not isinstance(lr, (str, bytes)):
        values = np.asarray(list(lr) if not isinstance(lr, np.ndarray) else lr, dtype=np.float32).reshape(-1)
        if values.size == 0 or (values < 0).any() or not np.isfinite(values).all():
            raise ValueError("a per-step learning-rate list must be non-empty, finite and >= 0")
        return values
    raise TypeError(f"learning rate must be a float, a per-step list/array/Tensor or a "
                    f"LearningRateSchedule, got {type(lr).__name__}")


def create_optimizer(params, *, opt="adamw", lr=1e-3, weight_decay=0.05, weight_decay_filter="norm_and_bias",
                     betas=(0.9, 0.999), eps=1e-8, momentum=0.9, nesterov=False, bias_correction=True,
                     no_weight_decay=NO_WEIGHT_DECAY):
    """Build an ``nn.Optimizer`` for ``params`` (``net.trainable_params()``; a Cell is also accepted).

    opt: ``adamw`` (nn.AdamWeightDecay, see the module docstring for ``bias_correction``), ``sgd``
    (nn.SGD with ``momentum``/``nesterov``) or ``momentum`` (nn.Momentum). For sgd/momentum the
    weight decay is L2 added to the gradient (MindSpore's semantics).
    lr: a float, a per-step list/array/1-D Tensor (indexed by the optimizer's ``global_step``, e.g.
    :func:`mindppt.engine.schedule.create_lr_schedule`; past its end the last value is kept), or a
    LearningRateSchedule.
    """
    if isinstance(params, nn.Cell):
        params = params.trainable_params()
    opt = str(opt).lower()
    lr = _check_lr(lr)
    groups = param_groups(params, weight_decay, weight_decay_filter, tuple(no_weight_decay))
    if opt == "adamw":
        beta1, beta2 = (float(b) for b in betas)
        if bias_correction:
            lr = AdamBiasCorrectedLR(lr, beta1, beta2)
            for group in groups:
                if group.get("weight_decay"):
                    group["weight_decay"] = _UncorrectedDecay(group["weight_decay"], beta1, beta2)
        elif isinstance(lr, np.ndarray):
            lr = _StepTable(lr)
        return nn.AdamWeightDecay(groups, learning_rate=lr, beta1=beta1, beta2=beta2, eps=float(eps),
                                  weight_decay=float(weight_decay))
    if isinstance(lr, np.ndarray):
        lr = _StepTable(lr)
    if opt == "sgd":
        return nn.SGD(groups, learning_rate=lr, momentum=float(momentum), nesterov=bool(nesterov),
                      weight_decay=float(weight_decay))
    if opt == "momentum":
        return nn.Momentum(groups, learning_rate=lr, momentum=float(momentum), use_nesterov=bool(nesterov),
                           weight_decay=float(weight_decay))
    raise ValueError(f"unknown optimizer {opt!r}; expected one of adamw, sgd, momentum")
