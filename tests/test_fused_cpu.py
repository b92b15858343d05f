"""Fused CPU GELU kernel (mindppt.models.fused_cpu): built here, exact, differentiable, every way of not
using it falls back to the portable GELU, and a kernel cache shared between machines never hands a CPU a
library built for instructions it lacks.

Accuracy bounds are relative to float32's precision (tests/model_helpers.gelu_tolerance) and hold for
every build level: x86-64-v3 (AVX2/FMA, the level of the machine this suite was written on) and the
lower x86-64-v2 and x86-64 are built and checked here. AVX-512 (x86-64-v4) builds cannot run on a
CPU without AVX-512 and are only checked where the CPU has it.
"""
import json
import os
import shutil
import subprocess

import mindspore as ms
import numpy as np
import pytest
from model_helpers import (
    FP16_GELU_TOL,
    GELU_GRAD_ATOL,
    MINDSPORE_PHI_ULPS,
    U32,
    SumOf,
    assert_gelu_close,
    exact_gelu,
    exact_gelu_grad,
    gelu_tolerance,
)

from mindppt.models import create_model, fused_cpu
from mindppt.models.vit import GELU

X = np.concatenate([np.linspace(-40, 40, 160001), [-1e30, -1e4, -300.0, 300.0, 1e4, 1e30]])


def _assert_grad_close(grad, x, weight, what):
    """grad = weight * dGELU(x), each within GELU_GRAD_ATOL, plus the product's rounding."""
    expected = weight * exact_gelu_grad(x)
    tol = np.abs(weight) * GELU_GRAD_ATOL + 2 * U32 * np.abs(expected)
    assert np.all(np.abs(grad - expected) <= tol), f"{what}: gradient error {np.abs(grad - expected).max():.3g}"


def test_fused_gelu_is_built_on_cpu_and_exact_with_its_gradient():
    fused = GELU()
    assert fused.fused_forward is not None, "the fused kernel did not build on this CPU machine"
    x = X.astype(np.float32).astype(np.float64)
    weight = np.random.default_rng(0).standard_normal(x.size).astype(np.float32).astype(np.float64)
    xt, wt = ms.Tensor(x.astype(np.float32)), ms.Tensor(weight.astype(np.float32))
    out = fused(xt).asnumpy()
    assert_gelu_close(out, x, what="fused GELU")
    _assert_grad_close(ms.grad(SumOf(fused))(xt, wt).asnumpy(), x, weight, "fused GELU")
    with fused_cpu.disabled():
        portable = GELU()
    assert portable.fused_forward is None
    portable_out = portable(xt).asnumpy()
    assert_gelu_close(portable_out, x, MINDSPORE_PHI_ULPS, what="portable GELU")
    # the same function: within the sum of both bounds
    both = gelu_tolerance(x) + gelu_tolerance(x, MINDSPORE_PHI_ULPS)
    assert np.all(np.abs(out - portable_out.astype(np.float64)) <= both)


def _levels_this_cpu_runs():
    level = fused_cpu.isa_level()
    if level not in fused_cpu.X86_64_LEVELS:
        return [level]
    return list(fused_cpu.X86_64_LEVELS[:fused_cpu.X86_64_LEVELS.index(level) + 1])


@pytest.mark.parametrize("level", ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"])
def test_every_isa_level_gives_gelu_within_the_float32_bound(level, tmp_path):
    """The same bound whatever the instructions (SSE2 only, SSE4.2, AVX2 with FMA contraction, AVX-512).
    A level this CPU lacks still builds, and its library is refused here (it is checked where it runs)."""
    library = fused_cpu.build_library(level, str(tmp_path))
    if level not in _levels_this_cpu_runs():
        assert not fused_cpu.usable(library), f"a {level} library is usable on a {fused_cpu.isa_level()} CPU"
        return
    assert os.path.basename(library).startswith(f"mindppt_cpu_{level}_") and fused_cpu.usable(library)
    forward, backward = fused_cpu.gelu_ops(library)
    x = X.astype(np.float32).astype(np.float64)
    xt = ms.Tensor(x.astype(np.float32))
    assert_gelu_close(forward(xt).asnumpy(), x, what=f"{level} GELU")
    weight = np.random.default_rng(0).standard_normal(x.size).astype(np.float32).astype(np.float64)
    grad = backward(xt, ms.Tensor(weight.astype(np.float32))).asnumpy()
    _assert_grad_close(grad, x, weight, f"{level} GELU")


def test_model_uses_the_fused_kernel_and_gives_the_portable_logits():
    """Dense DeiT-Ti (no compression: no near-tied decisions for the GELU's last bits to flip): logits
    through 12 blocks agree to ~100 float32 ulps of the largest logit."""
    images = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32))
    ms.set_seed(0)
    fused = create_model("deit_tiny_patch16_224", img_size=64, num_classes=10)
    ms.set_seed(0)
    with fused_cpu.disabled():
        portable = create_model("deit_tiny_patch16_224", img_size=64, num_classes=10)
    assert fused.blocks[0].mlp.act.fused_forward is not None
    assert portable.blocks[0].mlp.act.fused_forward is None
    fused.set_train(False)
    portable.set_train(False)
    a, b = fused(images).asnumpy(), portable(images).asnumpy()
    assert np.abs(a - b).max() <= 2 ** 10 * U32 * np.abs(b).max()


def test_fp16_input_takes_the_portable_path():
    x = np.linspace(-8, 8, 1601).astype(np.float16).astype(np.float64)
    out = GELU()(ms.Tensor(x.astype(np.float16))).asnumpy()
    assert out.dtype == np.float16
    exact = exact_gelu(x)
    assert np.all(np.abs(out.astype(np.float64) - exact) <= FP16_GELU_TOL * (np.abs(exact) + 1))


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
    with pytest.warns(RuntimeWarning, match="fused CPU kernels not available .*/bin/false failed"):
        assert GELU().fused_forward is None
    assert GELU().fused_forward is None  # no second attempt, no second warning
    assert not [f for f in os.listdir(tmp_path / "cache") if f.endswith((".so", ".json"))]  # nothing half-written


def test_build_writes_one_library_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(fused_cpu, "_state", {"enabled": True, "library": None, "failed": False})
    monkeypatch.setenv("MINDPPT_KERNEL_CACHE", str(tmp_path))
    path = fused_cpu.library_path()
    assert path is not None and os.path.dirname(path) == str(tmp_path)
    name = os.path.basename(path)
    assert sorted(os.listdir(tmp_path)) == [name, name + ".json"]  # the temporary files were renamed
    assert name.startswith(f"mindppt_cpu_{fused_cpu.isa_level()}_")
    monkeypatch.setattr(fused_cpu, "_state", {"enabled": True, "library": None, "failed": False})
    assert fused_cpu.library_path() == path  # cached: same source, flags and level


def test_the_library_exports_only_its_kernels():
    """The C++ internals (the worker pool's code and statics) stay private to each build, so builds for two
    instruction-set levels loaded in one process (as the tests here do) never run each other's code."""
    nm = shutil.which("nm")
    assert nm is not None, "nm (binutils, which the C++ compiler needs too) is not installed"
    listing = subprocess.run([nm, "-D", "--defined-only", fused_cpu.library_path()], capture_output=True, text=True,
                             check=True).stdout
    names = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    kernels = {name for name in names if name.startswith("Mindppt")}
    assert {"MindpptLinear", "MindpptAttentionValues", "MindpptLayerNormForward"} <= kernels
    assert not names - kernels, sorted(names - kernels)[:5]


def test_unwritable_cache_falls_back_to_a_temporary_directory(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setattr(fused_cpu, "_state", {"enabled": True, "library": None, "failed": False})
    monkeypatch.setenv("MINDPPT_KERNEL_CACHE", str(blocked / "kernels"))
    monkeypatch.setattr(fused_cpu.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = fused_cpu.library_path()
    assert path is not None and path.startswith(str(tmp_path / "tmp"))


# /proc/cpuinfo flags of the two 2-core AMD EPYC machines the suite has run on: AVX2 only, and AVX-512
EPYC_AVX2 = frozenset(
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall "
    "nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid "
    "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes "
    "xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw "
    "topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap "
    "clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd arat umip pku ospke vaes "
    "vpclmulqdq rdpid fsrm".split())
EPYC_AVX512 = EPYC_AVX2 | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi",
                           "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16"}


def test_isa_level_comes_from_the_cpu_flags_and_sets_explicit_compiler_flags():
    assert fused_cpu.isa_level(EPYC_AVX2, "x86_64") == "x86-64-v3"
    assert fused_cpu.isa_level(EPYC_AVX512, "x86_64") == "x86-64-v4"
    assert fused_cpu.isa_level(EPYC_AVX512 - {"avx512dq"}, "x86_64") == "x86-64-v3"
    assert fused_cpu.isa_level(EPYC_AVX2 - {"fma"}, "x86_64") == "x86-64-v2"
    assert fused_cpu.isa_level(frozenset(), "x86_64") == "x86-64"  # /proc/cpuinfo unreadable: baseline
    assert fused_cpu.isa_level(EPYC_AVX2, "aarch64") == "aarch64"  # the compiler's baseline there
    assert fused_cpu.required_flags("x86-64-v4") <= EPYC_AVX512
    assert not fused_cpu.required_flags("x86-64-v4") <= EPYC_AVX2
    assert fused_cpu.required_flags("x86-64") == fused_cpu.required_flags("aarch64") == frozenset()
    for level in fused_cpu.X86_64_LEVELS + ("aarch64",):
        flags = fused_cpu._compiler_flags(level)  # pylint: disable=protected-access
        assert not any("native" in flag for flag in flags), flags
        assert ("-mavx2" in flags) == (level in ("x86-64-v3", "x86-64-v4")), (level, flags)
        assert ("-mavx512f" in flags) == (level == "x86-64-v4"), (level, flags)
    assert len({fused_cpu.library_name(level) for level in fused_cpu.X86_64_LEVELS}) == 4


def _plant(directory, name, level, content=b"built elsewhere"):
    """A cache entry as another machine (or a careless copy) left it."""
    (directory / name).write_bytes(content)
    record = {"level": level, "requires": sorted(fused_cpu.required_flags(level)), "machine": "x86_64"}
    (directory / (name + ".json")).write_text(json.dumps(record))
    return str(directory / name)


def test_a_shared_cache_never_hands_a_cpu_a_library_for_a_level_it_lacks(tmp_path, monkeypatch):
    """An AVX-512 machine and an AVX2 machine share the cache (NFS home, a container image built on the
    other one). Neither the AVX-512 library nor one that merely carries the AVX2 name is loaded by the
    AVX2 machine: it builds and uses its own x86-64-v3 library."""
    monkeypatch.setattr(fused_cpu, "_machine", lambda: "x86_64")
    monkeypatch.setenv("MINDPPT_KERNEL_CACHE", str(tmp_path))
    v4 = _plant(tmp_path, fused_cpu.library_name("x86-64-v4"), "x86-64-v4")
    # an AVX-512 build copied under the AVX2 library's name, its record still saying what it is
    v3_name = fused_cpu.library_name("x86-64-v3")
    _plant(tmp_path, v3_name, "x86-64-v4")
    # and an old-style library built with -march=native: never looked at
    (tmp_path / "mindppt_gelu_c05007e5f5700bfd.so").write_bytes(b"-march=native, some CPU")

    monkeypatch.setattr(fused_cpu, "cpu_flags", lambda: EPYC_AVX2)
    assert not fused_cpu.usable(v4) and not fused_cpu.usable(str(tmp_path / v3_name))
    monkeypatch.setattr(fused_cpu, "_state", {"enabled": True, "library": None, "failed": False})
    path = fused_cpu.library_path()
    assert path == str(tmp_path / v3_name)
    with open(path, "rb") as handle:
        assert handle.read(4) == b"\x7fELF"  # rebuilt here, not the planted one
    with open(path + ".json", encoding="utf-8") as handle:
        assert json.load(handle)["level"] == "x86-64-v3"
    assert fused_cpu.usable(path)
    assert (tmp_path / "mindppt_gelu_c05007e5f5700bfd.so").read_bytes() == b"-march=native, some CPU"
    with open(v4, "rb") as handle:
        assert handle.read() == b"built elsewhere"  # left alone

    # the AVX-512 machine picks its own level; a record that does not match the name is never trusted
    monkeypatch.setattr(fused_cpu, "cpu_flags", lambda: EPYC_AVX512)
    assert fused_cpu.isa_level() == "x86-64-v4" and fused_cpu.usable(v4)
    os.rename(v4 + ".json", v4 + ".tmp")
    assert not fused_cpu.usable(v4)  # no record: rebuilt before use
    _plant(tmp_path, os.path.basename(v4), "x86-64-v3")
    assert not fused_cpu.usable(v4)  # record for another level than the name
