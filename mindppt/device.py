"""Device and execution-mode setup shared by every entry point (nothing else assumes a backend).

``device_target`` is checked against what the installed MindSpore can load before anything else runs,
so a recipe written for Ascend fails on a CPU machine with one line that says what to pass instead.
``auto`` picks Ascend, else GPU, else CPU.
"""
import mindspore as ms

from mindppt.errors import DeviceUnavailableError

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")
AUTO = "auto"
AUTO_ORDER = ("Ascend", "GPU", "CPU")
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
JIT_LEVELS = ("O0", "O1", "O2")


def is_available(device_target):
    """Whether this MindSpore installation can load ``device_target`` (its plugin and the driver)."""
    return bool(ms.hal.is_available(device_target))


def resolve_device_target(device_target, cpu_flags=""):
    """``device_target`` itself when it is available, the first available of Ascend/GPU/CPU for ``auto``.

    Raises DeviceUnavailableError naming the target, the available ones and, for a CPU fallback,
    ``--device_target CPU`` followed by ``cpu_flags`` (e.g. the precision options a recipe should drop)."""
    if device_target == AUTO:
        return next(t for t in AUTO_ORDER if t == "CPU" or is_available(t))
    if device_target not in DEVICE_TARGETS:
        raise DeviceUnavailableError(
            f"device_target {device_target!r} is not one of {', '.join(DEVICE_TARGETS + (AUTO,))}")
    if is_available(device_target):
        return device_target
    available = [t for t in DEVICE_TARGETS if t == "CPU" or is_available(t)]
    instead = " or ".join(f"--device_target {t}" + (f" {cpu_flags}" if t == "CPU" and cpu_flags else "")
                          for t in available if t != device_target)
    raise DeviceUnavailableError(
        f"device_target {device_target} is not available in this MindSpore {ms.__version__} installation "
        f"(available: {', '.join(available)}); run with {instead}, or --device_target auto")


def setup_device(device_target="CPU", mode="graph", device_id=None, jit_level=None):
    """Select backend, execution mode and graph optimisation level; errors name the bad value.
    Returns the device target in use (``auto`` resolved)."""
    device_target = resolve_device_target(device_target)
    mode_key = str(mode).lower()
    if mode_key not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if jit_level and jit_level not in JIT_LEVELS:
        raise ValueError(f"jit_level {jit_level!r} is not one of {', '.join(JIT_LEVELS)}")
    if device_id is None:
        ms.set_device(device_target)
    else:
        ms.set_device(device_target, int(device_id))
    ms.set_context(mode=MODES[mode_key])
    if jit_level:
        ms.set_context(jit_config={"jit_level": jit_level})
    return device_target
