"""Fused CPU kernels (MindSpore ``ops.Custom``, ``func_type="aot"``), built on first use.

MindSpore's CPU backend runs every element-wise op as its own pass over memory, so our exact GELU
polynomial costs ~17 passes over the MLP's hidden activations (22% of a PPT DeiT-S forward). The
kernel in ``cpu_kernels/gelu.cc`` does the same arithmetic in one pass. It is compiled with the
system's C++ compiler into a per-user cache the first time a model is built on the CPU backend
(``MINDPPT_KERNEL_CACHE``, default ``~/.cache/mindppt/kernels``, or a per-user temporary directory
when that is not writable). Anything that stops it (another backend, no compiler, a failed build,
``MINDPPT_FUSED_CPU_KERNELS=0``, :func:`set_enabled`) leaves the portable MindSpore-op formulation in
place; a failed build is reported once as a warning.

A cache may be shared between machines (an NFS home, a container image built elsewhere), so a library
is never built for "this CPU" (``-march=native``) but for an explicit instruction-set level: on x86-64
the highest micro-architecture level (x86-64, -v2, -v3 = AVX2/FMA, -v4 = AVX-512) whose features all
appear in this CPU's ``/proc/cpuinfo`` flags (:func:`isa_level`); elsewhere the compiler's baseline for
the architecture. The level is part of the library's name, and a record next to it
(``<library>.json``) lists the CPU flags that level needs; a library is only used when its record names
the expected level and this CPU has every flag it lists, otherwise it is rebuilt. A machine therefore
only ever loads a library for a level it has, whoever wrote the cache. Levels give the same results
within float32 rounding (FMA contraction from -v3 on changes the last bits).
"""
import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import warnings

import mindspore as ms
from mindspore import ops

from mindppt.io import atomic_output, atomic_write

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels", "gelu.cc")
# -fno-math-errno and -fno-trapping-math let GCC vectorise the loops; no -ffast-math, so inf/nan behave.
_BASE_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared", "-pthread"]
_ENV_SWITCH = "MINDPPT_FUSED_CPU_KERNELS"

# x86-64 micro-architecture levels (x86-64 psABI), lowest first: the /proc/cpuinfo flags each adds to the
# previous one (pni = SSE3, abm = LZCNT, lahf_lm = LAHF/SAHF) and the compiler flags that enable them
# (spelled out rather than -march=x86-64-vN, which needs GCC 11 / clang 12).
_X86_64_LEVELS = (
    ("x86-64-v2", ("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"),
     ("-mcx16", "-msahf", "-mpopcnt", "-msse3", "-msse4.1", "-msse4.2", "-mssse3")),
    ("x86-64-v3", ("abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"),
     ("-mlzcnt", "-mavx", "-mavx2", "-mbmi", "-mbmi2", "-mf16c", "-mfma", "-mmovbe", "-mxsave")),
    ("x86-64-v4", ("avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"),
     ("-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512f", "-mavx512vl")),
)
X86_64_LEVELS = ("x86-64",) + tuple(level for level, _, _ in _X86_64_LEVELS)

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


def cpu_flags():
    """This CPU's feature flags as ``/proc/cpuinfo`` lists them (empty when it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def _machine():
    return platform.machine().lower() or "unknown"


def _is_x86_64(machine):
    return machine in ("x86_64", "amd64")


def isa_level(flags=None, machine=None):
    """The instruction-set level to build for: on x86-64 the highest level of :data:`X86_64_LEVELS`
    whose features are all in ``flags`` (default: this CPU's), else the machine name (the compiler's
    baseline for that architecture)."""
    machine = machine or _machine()
    if not _is_x86_64(machine):
        return machine
    flags = cpu_flags() if flags is None else flags
    level = "x86-64"
    for name, needed, _ in _X86_64_LEVELS:
        if not set(needed) <= set(flags):
            break
        level = name
    return level


def required_flags(level):
    """The /proc/cpuinfo flags a CPU needs to run a library built for ``level``."""
    needed = set()
    for name, features, _ in _X86_64_LEVELS:
        needed.update(features)
        if name == level:
            return frozenset(needed)
    return frozenset()  # x86-64 baseline, or another architecture's baseline


def _compiler_flags(level):
    if level not in X86_64_LEVELS:
        return list(_BASE_FLAGS)  # another architecture: the compiler's own baseline
    flags = ["-march=x86-64", "-mtune=generic"]
    for name, _, options in _X86_64_LEVELS:
        if X86_64_LEVELS.index(name) > X86_64_LEVELS.index(level):
            break
        flags.extend(options)
    return _BASE_FLAGS + flags


def _cache_dir():
    return os.environ.get("MINDPPT_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mindppt",
                                                                   "kernels")


def _cache_dirs():
    # the user cache, else (read-only home on some CI and cluster setups) a per-user temporary one
    return (_cache_dir(), os.path.join(tempfile.gettempdir(), f"mindppt-kernels-{os.getuid()}"))


def library_name(level):
    """File name of the library for ``level``: the level, then a hash of source, flags and machine."""
    with open(_SOURCE, "rb") as handle:
        source = handle.read()
    flags = " ".join(_compiler_flags(level))
    key = hashlib.sha1(source + flags.encode() + _machine().encode()).hexdigest()[:16]
    return f"mindppt_gelu_{level}_{key}.so"


def usable(library, flags=None):
    """True when ``library`` exists and its record says it was built for the level its name gives, on
    this kind of machine, with CPU flags that ``flags`` (default: this CPU's) all has."""
    flags = cpu_flags() if flags is None else flags
    try:
        with open(library + ".json", encoding="utf-8") as handle:
            record = json.load(handle)
        level = record["level"]
        needed = set(record["requires"]) | required_flags(level)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (os.path.isfile(library) and os.path.basename(library).startswith(f"mindppt_gelu_{level}_")
            and record.get("machine") == _machine() and needed <= set(flags))


def build_library(level, directory):
    """Compile the kernel for ``level`` into ``directory`` (atomically, with its record) and return the
    library's path. Raises OSError (directory not writable) or RuntimeError (no compiler, failed build)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (g++ or clang++; or set CXX)")
    library = os.path.join(directory, library_name(level))
    flags = _compiler_flags(level)
    # library first, then its record, each atomically: a reader that sees a record sees the library it
    # describes (in between it may see the new library with an old record, which it rejects and rebuilds)
    with atomic_output(library, suffix=".so") as tmp:
        proc = subprocess.run([compiler, *flags, _SOURCE, "-o", tmp], capture_output=True, text=True,
                              timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-500:]}")
    atomic_write(library + ".json", json.dumps({"level": level, "requires": sorted(required_flags(level)),
                                                "machine": _machine(), "compiler": compiler, "flags": flags}))
    return library


def _build():
    """Path of the library for this CPU's level, from the cache if a usable one is there (else built
    now), or an exception."""
    level = isa_level()
    name = library_name(level)
    unwritable = None
    for directory in _cache_dirs():
        library = os.path.join(directory, name)
        if usable(library):
            return library
        try:
            return build_library(level, directory)
        except OSError as err:
            unwritable = err
    raise unwritable


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


def gelu_ops(library=None):
    """``(forward, backward)`` Custom ops of the fused GELU for float32 on CPU, or None. ``library``:
    a specific build (e.g. from :func:`build_library`) instead of this process's."""
    library = library or library_path()
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
