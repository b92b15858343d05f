"""Fused CPU kernels (MindSpore ``ops.Custom``, ``func_type="aot"``), built on first use.

MindSpore's CPU backend runs every element-wise op as its own pass over memory, so our exact GELU
polynomial costs ~17 passes over the MLP's hidden activations (22% of a PPT DeiT-S forward). The
kernel in ``cpu_kernels/gelu.cc`` does the same arithmetic in one pass. It is compiled with the
system's C++ compiler into a per-user cache the first time a model is built on the CPU backend
(``MINDPPT_KERNEL_CACHE``, default ``~/.cache/mindppt/kernels``, or a per-user temporary directory
when that is not writable), keyed by the source, the flags and
the CPU. Anything that stops it (another backend, no compiler, a failed build,
``MINDPPT_FUSED_CPU_KERNELS=0``, :func:`set_enabled`) leaves the portable MindSpore-op formulation in
place; a failed build is reported once as a warning.
"""
import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings

import mindspore as ms
from mindspore import ops

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels", "gelu.cc")
# -fno-math-errno and -fno-trapping-math let GCC vectorise the loops; no -ffast-math, so inf/nan behave.
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared", "-pthread"]
_ENV_SWITCH = "MINDPPT_FUSED_CPU_KERNELS"

_state = {"enabled": True, "library": None, "failed": False}


def set_enabled(enabled):
    """Turn the fused kernels on or off for models built from now on (e.g. to build the portable
    graph that Ascend and GPU run)."""
    _state["enabled"] = bool(enabled)


@contextlib.contextmanager
def disabled():
    """Build models without fused CPU kernels inside this block."""
    previous = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = previous


def _cpu_signature():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _cache_dir():
    return os.environ.get("MINDPPT_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mindppt",
                                                                   "kernels")


def _build():
    """Path of the compiled library (built now if missing), or None with one warning."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (g++ or clang++; or set CXX)")
    with open(_SOURCE, "rb") as handle:
        source = handle.read()
    key = hashlib.sha1(source + " ".join(_FLAGS).encode() + _cpu_signature().encode()).hexdigest()[:16]
    name = f"mindppt_gelu_{key}.so"
    # the user cache, else (read-only home on some CI and cluster setups) a per-user temporary one
    for directory in (_cache_dir(), os.path.join(tempfile.gettempdir(), f"mindppt-kernels-{os.getuid()}")):
        library = os.path.join(directory, name)
        if os.path.exists(library):
            return library
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".mindppt_gelu_", suffix=".so", dir=directory)
            break
        except OSError as err:
            unwritable = err
    else:
        raise unwritable
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *_FLAGS, _SOURCE, "-o", tmp], capture_output=True, text=True,
                              timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, library)  # atomic: concurrent builders never see a half-written library
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return library


def library_path():
    """The fused-kernel library for this process, or None when the kernels are not used."""
    if not _state["enabled"] or os.environ.get(_ENV_SWITCH, "1") == "0" or _state["failed"]:
        return None
    if ms.get_context("device_target") != "CPU":
        return None
    if _state["library"] is None:
        try:
            _state["library"] = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _state["failed"] = True
            warnings.warn(f"fused CPU GELU kernel not available ({err}); using the portable GELU "
                          f"(correct, slower on CPU). Set {_ENV_SWITCH}=0 to silence this.", RuntimeWarning)
            return None
    return _state["library"]


def gelu_ops():
    """``(forward, backward)`` Custom ops of the fused GELU for float32 on CPU, or None."""
    library = library_path()
    if library is None:
        return None
    # ops.Custom wants callables for the output shape and dtype: those of the (first) input
    forward = ops.Custom(f"{library}:MindpptGeluForward", out_shape=_same, out_dtype=_same, func_type="aot")
    backward = ops.Custom(f"{library}:MindpptGeluBackward", out_shape=_first, out_dtype=_first, func_type="aot")
    return forward, backward


def _same(x):
    return x


def _first(x, _):
    return x
