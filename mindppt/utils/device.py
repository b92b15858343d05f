"""Device and execution-mode setup shared by every entry point (nothing else assumes a backend)."""
import mindspore as ms

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
JIT_LEVELS = ("O0", "O1", "O2")


def setup_device(device_target="CPU", mode="graph", device_id=None, jit_level=None):
    """Select backend, execution mode and graph optimisation level; errors name the bad value."""
    if device_target not in DEVICE_TARGETS:
        raise ValueError(f"device_target {device_target!r} is not one of {', '.join(DEVICE_TARGETS)}")
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
