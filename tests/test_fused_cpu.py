"""Fused CPU GELU kernel (mindppt.models.fused_cpu): built here, exact, differentiable, and every way of
not using it falls back to the portable GELU."""
import math
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindppt.models import create_model, fused_cpu
from mindppt.models.vit import GELU


class SumOf(nn.Cell):
    def __init__(self, act):
        super().__init__()
        self.act = act

    def construct(self, x, weight):
        return (self.act(x) * weight).sum()


def exact_gelu(x):
    return x * 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2))


def exact_gelu_grad(x):
    return 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2)) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def test_fused_gelu_is_built_on_cpu_and_exact_with_its_gradient():
    fused = GELU()
    assert fused.fused_forward is not None, "the fused kernel did not build on this CPU machine"
    x = np.concatenate([np.linspace(-40, 40, 160001), [-1e30, -1e4, -300.0, 300.0, 1e4, 1e30]])
    weight = np.random.default_rng(0).standard_normal(x.size)
    xt, wt = ms.Tensor(x.astype(np.float32)), ms.Tensor(weight.astype(np.float32))
    np.testing.assert_allclose(fused(xt).asnumpy(), exact_gelu(x), rtol=2e-7, atol=1.5e-6)
    grad = ms.grad(SumOf(fused))(xt, wt).asnumpy()
    np.testing.assert_allclose(grad, weight * exact_gelu_grad(x), rtol=1e-5, atol=2e-6)
    with fused_cpu.disabled():
        portable = GELU()
    assert portable.fused_forward is None
    np.testing.assert_allclose(fused(xt).asnumpy(), portable(xt).asnumpy(), rtol=1e-6, atol=1e-6)


def test_model_uses_the_fused_kernel_and_gives_the_portable_logits():
    images = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32))
    ms.set_seed(0)
    fused = create_model("ppt_deit_tiny_patch16_224", img_size=64, num_classes=10)
    ms.set_seed(0)
    with fused_cpu.disabled():
        portable = create_model("ppt_deit_tiny_patch16_224", img_size=64, num_classes=10)
    assert fused.blocks[0].mlp.act.fused_forward is not None
    assert portable.blocks[0].mlp.act.fused_forward is None
    fused.set_train(False)
    portable.set_train(False)
    np.testing.assert_allclose(fused(images).asnumpy(), portable(images).asnumpy(), rtol=1e-5, atol=1e-5)


def test_fp16_input_takes_the_portable_path():
    x = np.linspace(-8, 8, 1601)
    out = GELU()(ms.Tensor(x.astype(np.float16))).asnumpy()
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float64), exact_gelu(x), rtol=2e-3, atol=2e-3)


def test_switches_and_a_failed_build_fall_back_to_the_portable_gelu(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDPPT_FUSED_CPU_KERNELS", "0")
    assert GELU().fused_forward is None
    monkeypatch.delenv("MINDPPT_FUSED_CPU_KERNELS")
    fused_cpu.set_enabled(False)
    try:
        assert GELU().fused_forward is None
    finally:
        fused_cpu.set_enabled(True)
    # a broken compiler: one warning naming the cause, then the portable GELU
    monkeypatch.setattr(fused_cpu, "_state", {"enabled": True, "library": None, "failed": False})
    monkeypatch.setenv("MINDPPT_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.warns(RuntimeWarning, match="fused CPU GELU kernel not available .*/bin/false failed"):
        assert GELU().fused_forward is None
    assert GELU().fused_forward is None  # no second attempt, no second warning
    assert not [f for f in os.listdir(tmp_path / "cache") if f.endswith(".so")]  # nothing half-written


def test_build_writes_one_library_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(fused_cpu, "_state", {"enabled": True, "library": None, "failed": False})
    monkeypatch.setenv("MINDPPT_KERNEL_CACHE", str(tmp_path))
    path = fused_cpu.library_path()
    assert path is not None and os.path.dirname(path) == str(tmp_path)
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # the temporary file was renamed
    monkeypatch.setattr(fused_cpu, "_state", {"enabled": True, "library": None, "failed": False})
    assert fused_cpu.library_path() == path  # cached: same source, flags and CPU


def test_unwritable_cache_falls_back_to_a_temporary_directory(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setattr(fused_cpu, "_state", {"enabled": True, "library": None, "failed": False})
    monkeypatch.setenv("MINDPPT_KERNEL_CACHE", str(blocked / "kernels"))
    monkeypatch.setattr(fused_cpu.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = fused_cpu.library_path()
    assert path is not None and path.startswith(str(tmp_path / "tmp"))
