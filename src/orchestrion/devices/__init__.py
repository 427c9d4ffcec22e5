"""The lab's devices, built from the configuration in `devices/`."""

from ._config import DeviceEntry, LabConfig, ReadoutRole, load_lab_config
from ._registry import DeviceRegistry, DeviceState, LabDevice, build_devices, connect_devices

__all__ = [
    "DeviceEntry",
    "DeviceRegistry",
    "DeviceState",
    "LabConfig",
    "LabDevice",
    "ReadoutRole",
    "build_devices",
    "connect_devices",
    "load_lab_config",
]
