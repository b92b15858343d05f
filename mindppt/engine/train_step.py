"""The jitted training step: loss, gradients, data-parallel averaging, loss scaling, clipping, optimizer,
EMA -- one ``nn.Cell`` that ``mindspore.train.Model`` runs as its network (as mindcv's ``TrainStep``).

It subclasses ``nn.TrainOneStepCell``, which sets up the ``DistributedGradReducer`` (gradient mean over
devices) whenever the parallel mode is DATA_PARALLEL, and adds what that cell lacks:

* loss scaling for fp16: ``fixed`` (a constant scale; with ``drop_overflow_update``, as mindcv's option, a
  step whose gradients overflow is skipped, else applied) or
  ``dynamic`` (``nn.DynamicLossScaleUpdateCell``: halve on overflow, double after ``scale_window`` clean
  steps). Gradients are checked with ``mindspore.amp.all_finite`` and unscaled before clipping.
* gradient clipping to a global L2 norm (``ops.clip_by_global_norm``),
* an optional EMA of the weights (:class:`mindppt.engine.ema.EMA`), updated after each applied step.

The loss scale lives in a Parameter named ``scale_sense``, so checkpoints carry it.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.amp import all_finite

__all__ = ["SoftTargetCrossEntropy", "NetWithLoss", "TrainStep"]


class SoftTargetCrossEntropy(nn.Cell):
    """Mean over the batch of ``-sum_c target_c * log_softmax(logits)_c`` (timm's loss for mixup/cutmix
    and label-smoothed targets). Computed in float32 whatever the logits' dtype."""

    def construct(self, logits, target):
        log_prob = ops.log_softmax(logits.astype(ms.float32), -1)
        return (-target.astype(ms.float32) * log_prob).sum(-1).mean()


class NetWithLoss(nn.Cell):
    """``loss(model(images), targets)``; parameter names stay the model's own (no prefix)."""

    def __init__(self, model, loss_fn):
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss_fn = loss_fn

    def construct(self, images, targets):
        return self.loss_fn(self.model(images), targets)


_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(scale, grad):
    return grad * ops.reciprocal(scale).astype(grad.dtype)


class TrainStep(nn.TrainOneStepCell):
    """One optimisation step; returns the (unscaled) loss of the batch.

    Args:
        network: a cell computing the scalar loss from ``(images, targets)`` (:class:`NetWithLoss`).
        optimizer: an ``nn.Optimizer`` over the model's trainable parameters.
        loss_scale_type: ``none``, ``fixed`` or ``dynamic``.
        loss_scale: the fixed scale, or the initial dynamic scale.
        scale_window: clean steps before a dynamic scale doubles.
        clip_grad: global-norm clipping threshold (0 = off).
        drop_overflow_update: with fixed scaling, skip the update of a step whose gradients overflow.
        ema: an :class:`~mindppt.engine.ema.EMA` over the same parameters, or None.
    """

    def __init__(self, network, optimizer, *, loss_scale_type="none", loss_scale=1024.0, scale_window=2000,
                 clip_grad=0.0, drop_overflow_update=False, ema=None):
        super().__init__(network, optimizer, sens=1.0)
        if loss_scale_type not in ("none", "fixed", "dynamic"):
            raise ValueError(f"loss_scale_type must be none, fixed or dynamic, got {loss_scale_type!r}")
        self.use_scaling = loss_scale_type != "none"
        self.dynamic = loss_scale_type == "dynamic"
        value = float(loss_scale) if self.use_scaling else 1.0
        self.scale_sense = Parameter(Tensor(value, ms.float32), name="scale_sense", requires_grad=False)
        self.scale_update = (nn.DynamicLossScaleUpdateCell(value, scale_factor=2, scale_window=int(scale_window))
                             if self.dynamic else None)
        self.clip = float(clip_grad) > 0
        self.clip_value = float(clip_grad)
        self.skip_overflow = self.dynamic or bool(drop_overflow_update)
        self.ema = ema
        self.use_ema = ema is not None
        self.hyper_map = ops.HyperMap()

    def _apply(self, loss, grads):
        loss = ops.depend(loss, self.optimizer(grads))
        if self.use_ema:
            loss = ops.depend(loss, self.ema())
        return loss

    def construct(self, images, targets):
        loss = self.network(images, targets)
        sens = ops.fill(loss.dtype, loss.shape, 1.0) * self.scale_sense.astype(loss.dtype)
        grads = self.grad(self.network, self.weights)(images, targets, sens)
        grads = self.grad_reducer(grads)
        if self.use_scaling:
            grads = self.hyper_map(ops.partial(_unscale, self.scale_sense), grads)
            finite = all_finite(grads)
            if self.dynamic:
                overflow = self.scale_update(self.scale_sense, ops.logical_not(finite))
                finite = ops.logical_not(overflow)
            if self.clip:
                grads = ops.clip_by_global_norm(grads, self.clip_value)
            if self.skip_overflow:
                if finite:
                    loss = self._apply(loss, grads)
                return loss
            return self._apply(loss, grads)
        if self.clip:
            grads = ops.clip_by_global_norm(grads, self.clip_value)
        return self._apply(loss, grads)
