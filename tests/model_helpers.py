"""Helpers shared by model tests."""
import numpy as np

import mindspore as ms


def sharpen_attention(model, factor=4.0):
    """Scale the q/k/v projections of a randomly initialised model so its attention is as peaked as a
    trained DeiT's (score variances around 1e-4, the paper's threshold range) instead of almost
    uniform. Near-uniform scores have near-ties whose order float rounding decides."""
    for name, param in model.parameters_and_names():
        if name.endswith("attn.qkv.weight"):
            param.set_data(ms.Tensor(param.asnumpy() * factor))
    return model


def random_images(n, seed=0, size=224):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
