"""Device checks: a requested backend must be loadable; ``auto`` picks Ascend, else GPU, else CPU."""
import pytest

from mindppt import device
from mindppt.device import DeviceUnavailableError, resolve_device_target


def test_cpu_is_always_available_and_auto_resolves_to_an_available_backend():
    assert resolve_device_target("CPU") == "CPU"
    chosen = resolve_device_target("auto")
    assert chosen in device.DEVICE_TARGETS and (chosen == "CPU" or device.is_available(chosen))


@pytest.mark.parametrize("installed, auto", [((), "CPU"), (("GPU",), "GPU"), (("GPU", "Ascend"), "Ascend")])
def test_auto_prefers_ascend_then_gpu_then_cpu(monkeypatch, installed, auto):
    monkeypatch.setattr(device, "is_available", lambda target: target == "CPU" or target in installed)
    assert resolve_device_target("auto") == auto


def test_unavailable_target_names_it_the_available_ones_and_the_flags(monkeypatch):
    monkeypatch.setattr(device, "is_available", lambda target: target in ("CPU", "GPU"))
    with pytest.raises(DeviceUnavailableError) as error:
        resolve_device_target("Ascend", "--amp_level O0")
    message = str(error.value)
    assert "device_target Ascend is not available" in message and "(available: CPU, GPU)" in message
    assert "--device_target CPU --amp_level O0 or --device_target GPU" in message
    assert "\n" not in message
    with pytest.raises(DeviceUnavailableError, match="is not one of CPU, GPU, Ascend, auto"):
        resolve_device_target("TPU")
