"""Fused CPU kernels (MindSpore ``ops.Custom``, ``func_type="aot"``), built on first use.

MindSpore's CPU backend runs every element-wise op as its own pass over memory, so our exact GELU
polynomial costs ~17 passes over the MLP's hidden activations (22% of a PPT DeiT-S forward), and its
CPU LayerNorm and softmax kernels are several times slower than PyTorch's. The kernels in
``cpu_kernels/`` do the same arithmetic in one pass each: the exact GELU (``gelu.cc``), LayerNorm
(``layer_norm.cc``) and softmax with PPT's proportional-attention bias (``softmax.cc``), forward and
backward, and the attention's head split/merge and the patch extraction as plain copies (``layout.cc``:
each MindSpore CPU Transpose call site also kept a buffer of twice its tensor alive), and PPT's
compression plan and size-weighted merge as index maps (``compression.cc``: the portable path's
assignment matrices made a compression block cost more memory than a dense block), and the linear layers
and attention products on oneDNN's sgemm (``gemm.cc``, with the bias, a skip connection or the GELU in
the same pass, and the heads written merged; at inference the whole attention, scores, softmax and values
per (image, head) from the qkv projection read in place; the oneDNN library is the one MindSpore ships),
and drop path's per-sample scaling (``drop_path.cc``).
They are compiled together, with the system's C++ compiler, into one library in a per-user cache the
first time a model is built on the CPU backend (``MINDPPT_KERNEL_CACHE``, default
``~/.cache/mindppt/kernels``, or a per-user temporary directory when that is not writable). Anything that
stops it (another backend, no compiler, a failed build, ``MINDPPT_FUSED_CPU_KERNELS=0``,
:func:`set_enabled`) leaves the portable MindSpore-op formulation in place (the graph Ascend and GPU
run); a failed build is reported once as a warning. The kernels split large jobs over
``MINDPPT_KERNEL_THREADS`` threads (default: every core), the calling one and a pool of workers started
once per process; between jobs a worker spins for up to ``MINDPPT_KERNEL_SPIN_US`` microseconds (default
200) before it sleeps, because waking a sleeping thread cost more than a small kernel's work.

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
import ctypes
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings

import mindspore as ms
from mindspore import ops

from mindppt.io import atomic_output, atomic_write

_KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels")
# every source is part of the library's hash; the .cc files are compiled together
_SOURCES = ("common.h", "gelu.cc", "layer_norm.cc", "softmax.cc", "layout.cc", "compression.cc", "gemm.cc",
            "drop_path.cc", "exports.map")
_PREFIX = "mindppt_cpu"
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
    digest = hashlib.sha1()
    for name in _SOURCES:
        with open(os.path.join(_KERNEL_DIR, name), "rb") as handle:
            digest.update(handle.read())
    digest.update(" ".join(_compiler_flags(level)).encode() + _machine().encode())
    return f"{_PREFIX}_{level}_{digest.hexdigest()[:16]}.so"


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
    return (os.path.isfile(library) and os.path.basename(library).startswith(f"{_PREFIX}_{level}_")
            and record.get("machine") == _machine() and needed <= set(flags))


def build_library(level, directory):
    """Compile the kernels for ``level`` into ``directory`` (atomically, with its record) and return the
    library's path. Raises OSError (directory not writable) or RuntimeError (no compiler, failed build)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (g++ or clang++; or set CXX)")
    library = os.path.join(directory, library_name(level))
    flags = _compiler_flags(level)
    # library first, then its record, each atomically: a reader that sees a record sees the library it
    # describes (in between it may see the new library with an old record, which it rejects and rebuilds)
    with atomic_output(library, suffix=".so") as tmp:
        sources = [os.path.join(_KERNEL_DIR, name) for name in _SOURCES if name.endswith(".cc")]
        exports = "-Wl,--version-script=" + os.path.join(_KERNEL_DIR, "exports.map")
        proc = subprocess.run([compiler, *flags, *sources, exports, "-ldl", "-o", tmp], capture_output=True, text=True,
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
            warnings.warn(f"fused CPU kernels not available ({err}); using the portable GELU, LayerNorm "
                          f"and softmax (correct, slower on CPU). Set {_ENV_SWITCH}=0 to silence this.", RuntimeWarning)
            return None
    return _state["library"]


def _custom(library, name, out_shape, out_dtype):
    return ops.Custom(f"{library}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot")


def gelu_ops(library=None):
    """``(forward, backward)`` Custom ops of the fused GELU for float32 on CPU, or None. ``library``:
    a specific build (e.g. from :func:`build_library`) instead of this process's."""
    library = library or library_path()
    if library is None:
        return None
    # ops.Custom wants callables for the output shape and dtype: those of the (first) input
    return (_custom(library, "MindpptGeluForward", _first, _first),
            _custom(library, "MindpptGeluBackward", _first, _first))


def layer_norm_ops(library=None):
    """``(forward, backward)`` of the fused LayerNorm over the last axis, or None.
    forward(x, weight, bias, eps) -> y; backward(x, weight, eps, dy) -> (dx, dweight, dbias); eps is a
    float32 tensor of shape (1,)."""
    library = library or library_path()
    if library is None:
        return None
    return (_custom(library, "MindpptLayerNormForward", _first, _first),
            _custom(library, "MindpptLayerNormBackward", _layer_norm_grads, _layer_norm_grads))


def softmax_ops(library=None):
    """``(forward, size_forward, backward)`` of the fused softmax over the last axis, or None.
    forward(x) -> y; size_forward(x, size) -> softmax(x + log(size)) with size (B, M) broadcast over the
    middle axes of x (B, ..., M) (proportional attention); backward(y, dy) -> dx."""
    library = library or library_path()
    if library is None:
        return None
    return (_custom(library, "MindpptSoftmaxForward", _first, _first),
            _custom(library, "MindpptSizeSoftmaxForward", _first, _first),
            _custom(library, "MindpptSoftmaxBackward", _first, _first))


def split_qkv_ops(num_heads, library=None):
    """``(forward, backward)`` of the attention's head split, or None. forward(qkv (B, N, 3C), scale (1,))
    -> (q * scale, k, v), each (B, H, N, C / H); backward(dq, dk, dv, scale) -> dqkv."""
    library = library or library_path()
    if library is None:
        return None

    def split_shape(qkv, *_):
        batch, tokens, width = qkv
        head = (batch, num_heads, tokens, width // (3 * num_heads))
        return head, head, head

    def merged_shape(dq, *_):
        batch, heads, tokens, dim = dq
        return batch, tokens, 3 * heads * dim

    return (_custom(library, "MindpptSplitQkv", split_shape, lambda qkv, *_: (qkv, qkv, qkv)),
            _custom(library, "MindpptSplitQkvBackward", merged_shape, _first))


def swap_axes_op(library=None):
    """x (B, P, Q, D) -> (B, Q, P, D) (the head merge, and its own gradient), or None."""
    library = library or library_path()
    if library is None:
        return None
    return _custom(library, "MindpptSwapAxes12", lambda x: (x[0], x[2], x[1], x[3]), _first)


def scale_samples_op(library=None):
    """(x (B, ...), scale (B, 1, ...)) -> x with sample b multiplied by scale[b] (drop path, and its gradient
    for x), or None."""
    library = library or library_path()
    if library is None:
        return None
    return _custom(library, "MindpptScaleSamples", _first, _first)


def patchify_op(patch_size, library=None):
    """images (B, C, H, W) -> patches (B * H/P * W/P, C * P * P) in Conv2d weight order, or None."""
    library = library or library_path()
    if library is None:
        return None
    p = int(patch_size)
    return _custom(library, "MindpptPatchify", lambda x: (x[0] * (x[2] // p) * (x[3] // p), x[1] * p * p), _first)


def embed_tokens_op(library=None):
    """(patches (B, P, C), prefix (1, K, C), pos (1, K + P, C)) -> (prefix, patches) + pos (B, K + P, C),
    or None."""
    library = library or library_path()
    if library is None:
        return None
    return _custom(library, "MindpptEmbedTokens", lambda x, prefix, pos: (x[0], pos[1], x[2]), _first)


def compression_ops(num_out, library=None):
    """``(significance, plan, merge, merge_backward, sum_rows)`` of PPT's compression to ``num_out``
    tokens, or None. significance(attn (B, H, N, N) or its class-token row (B, H, 1, N), value norms (B, N),
    num_protected (1,)) -> (scores (B, N), variance (B,)); plan(scores (B, N), variance (B,), threshold ()
    (pool where variance < threshold), head-summed keys (B, N, D), num_protected (1,)) -> (kept (B, M)
    int32, dest (B, N) int32); merge(x (B, N, C), size (B, N), dest) -> (new_x (B, M, C), new_size (B, M));
    merge_backward(dnew_x, size, new_size, dest) -> dx; sum_rows(rows (B, N, K), dest) -> (B, M, K).
    The keys and norms come from :func:`keys_and_value_norms_op` or the fused attention's internals."""
    library = library or library_path()
    if library is None:
        return None
    m = int(num_out)
    significance = _custom(library, "MindpptSignificance", lambda attn, norms, *_: (tuple(norms), (norms[0],)),
                           lambda attn, *_: (attn, attn))
    plan = _custom(library, "MindpptCompressionPlan", lambda scores, *_: ((scores[0], m), tuple(scores)),
                   lambda *_: (ms.int32, ms.int32))
    merge = _custom(library, "MindpptMergeTokens", lambda x, *_: ((x[0], m, x[2]), (x[0], m)),
                    lambda x, *_: (x, x))
    merge_backward = _custom(library, "MindpptMergeTokensBackward",
                             lambda dnew, size, *_: (dnew[0], size[1], dnew[2]), _first)
    sum_rows = _custom(library, "MindpptSumRows", lambda rows, _: (rows[0], m, rows[2]), _first)
    return significance, plan, merge, merge_backward, sum_rows


def _summary_shapes(qkv, num_heads):
    b, n, c = qkv[0], qkv[1], qkv[2] // 3
    return (b, n, c // num_heads), (b, n)


def keys_and_value_norms_op(num_heads, library=None):
    """What PPT's compression reads of a block's keys and values, or None: (qkv (B, N, 3C), setting (heads,
    ...)) -> (keys (B, N, C / H) summed over the heads, value norms (B, N) over all C columns), float32 from
    double sums. Forward only: they feed discrete decisions."""
    library = library or library_path()
    if library is None:
        return None
    h = int(num_heads)
    return _custom(library, "MindpptKeysAndValueNorms", lambda qkv, *_: _summary_shapes(qkv, h),
                   lambda qkv, *_: (qkv, qkv))


_ONEDNN = "libdnnl.so.3"  # the name gemm.cc looks up


def _onednn_loaded():
    """Load the oneDNN library MindSpore ships (the same file its own kernels use) for the gemm kernels;
    False when it is not there (then MindSpore's MatMul is used)."""
    if "onednn" not in _state:
        try:
            ctypes.CDLL(os.path.join(os.path.dirname(ms.__file__), "lib", _ONEDNN), mode=ctypes.RTLD_GLOBAL)
            _state["onednn"] = True
        except OSError:
            _state["onednn"] = False
    return _state["onednn"]


def linear_ops(library=None):
    """``(linear, linear_residual, linear_gelu)``, or None: linear(x (..., K), w (N, K), b (N)) -> x w^T + b
    (..., N), every leading axis a row; linear_residual(x, w, b, residual (..., N)) -> residual + x w^T + b;
    linear_gelu(x, w, b) -> gelu(x w^T + b). Their gradients: :func:`linear_grad_ops`."""
    library = library or library_path()
    if library is None or not _onednn_loaded():
        return None
    rows = lambda x, w, *_: (*x[:-1], w[0])
    return (_custom(library, "MindpptLinear", rows, _first), _custom(library, "MindpptLinearResidual", rows, _first),
            _custom(library, "MindpptLinearGelu", rows, _first))


def linear_grad_ops(library=None):
    """``(input_grad, weight_grad)``, or None: the gradients of :func:`linear_ops`' product for its output
    gradient dy (..., N). input_grad(dy, w (N, ...)) -> dy w (..., K), w read as (N, K); weight_grad(dy,
    x (..., K)) -> (dy^T x (N, K), dy summed over its rows (N,)), every leading axis a row."""
    library = library or library_path()
    if library is None or not _onednn_loaded():
        return None
    return (_custom(library, "MindpptLinearGradInput", lambda dy, w: (*dy[:-1], math.prod(w[1:])), _first),
            _custom(library, "MindpptLinearGradWeight", lambda dy, x: ((dy[-1], x[-1]), (dy[-1],)),
                    lambda dy, x: (dy, dy)))


def _inputs_after_first(dout, *inputs):
    """Shapes (or dtypes) of a backward kernel's outputs: one gradient per forward input."""
    return inputs


def attention_ops(library=None):
    """``(scores, values, scores_grad, values_grad)``, or None: scores(q (B, H, N, D), k (B, H, M, D)) -> q k^T
    (B, H, N, M); values(attn (B, H, N, M), v (B, H, M, D)) -> attn v with the heads merged, (B, N, H * D);
    scores_grad(dout, q, k) -> (dq, dk) and values_grad(dout (B, N, H * D), attn, v) -> (dattn, dv), their
    gradients."""
    library = library or library_path()
    if library is None or not _onednn_loaded():
        return None
    return (_custom(library, "MindpptAttentionScores", lambda q, k: (q[0], q[1], q[2], k[2]), _first),
            _custom(library, "MindpptAttentionValues", lambda a, v: (a[0], a[2], a[1] * v[3]), _first),
            _custom(library, "MindpptAttentionScoresGrad", _inputs_after_first, _inputs_after_first),
            _custom(library, "MindpptAttentionValuesGrad", _inputs_after_first, _inputs_after_first))


def fused_attention_ops(num_heads, internals=False, library=None):
    """``(attend, attend_sizes)``, or None: attend(qkv (B, N, 3C), setting (heads, scale)) -> softmax(scale
    q k^T) v (B, N, C) with the heads merged, from the qkv projection read in place; attend_sizes(qkv,
    size (B, N), setting) adds ``log(size)`` to the logits. With ``internals`` both also return what a
    compression block reads: the class token's probabilities (B, H, 1, N), and the head-summed keys and the
    value norms of :func:`keys_and_value_norms_op`. Forward only (:mod:`.vit` gives the gradient)."""
    library = library or library_path()
    if library is None or not _onednn_loaded():
        return None
    h = int(num_heads)

    def shapes(qkv, *_):
        b, n, c = qkv[0], qkv[1], qkv[2] // 3
        return ((b, n, c), (b, h, 1, n)) + _summary_shapes(qkv, h) if internals else (b, n, c)

    dtypes = (lambda qkv, *_: (qkv,) * 4) if internals else _first
    suffix = "Internals" if internals else ""
    return (_custom(library, "MindpptAttention" + suffix, shapes, dtypes),
            _custom(library, "MindpptSizeAttention" + suffix, shapes, dtypes))


def _first(x, *_):
    return x


def _layer_norm_grads(x, weight, *_):
    return x, weight, weight
