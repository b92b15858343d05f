"""Exponential moving average of the weights (timm's ``ModelEma``), updated inside the train graph.

The averages are Parameters named ``ema.<parameter name>``, so they are part of the training step's
parameters and land in every checkpoint next to the weights and the optimizer state.
"""
from mindspore import ParameterTuple, nn, ops

__all__ = ["EMA", "EMA_PREFIX"]

EMA_PREFIX = "ema."

_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Number", "Tensor", "Tensor")
def _update(decay, average, weight):
    return ops.assign(average, average * decay + weight.astype(average.dtype) * (1.0 - decay))


class EMA(nn.Cell):
    """``average <- decay * average + (1 - decay) * weight`` for every parameter in ``params``.

    ``construct()`` runs one update (call it after the optimizer step); the averages start as copies
    of the weights.
    """

    def __init__(self, params, decay=0.99996):
        super().__init__(auto_prefix=False)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.weights = ParameterTuple(params)
        self.averages = self.weights.clone(prefix=EMA_PREFIX.rstrip("."), init="same")
        for p in self.averages:
            p.requires_grad = False
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_ema_update, self.decay), self.averages, self.weights)

    def state(self):
        """``{model parameter name: averaged Tensor}``."""
        return {w.name: a for w, a in zip(self.weights, self.averages)}
