"""The lab's devices, built from the configuration in `devices/`.

Public entry points for every client of the lab (CLI, shell, worker, API server):
`load_devices`, `connect_devices`, `describe_devices`, and the run-time switches
`enable_device`, `disable_device`, `device_history`.  EPICS devices for configuration
files are in `orchestrion.devices.epics` (imported only by labs that name them).
"""

from typing import TYPE_CHECKING

from orchestrion._lazy import lazy_exports

if TYPE_CHECKING:
    from ._config import DeviceEntry, LabConfig, ReadoutRole, ResourceEntry, load_lab_config
    from ._lab import (
        describe_devices,
        device_history,
        device_switches,
        disable_device,
        enable_device,
        load_devices,
        switch_device,
    )
    from ._registry import (
        DEFAULT_CONNECT_TIMEOUT,
        DeviceRegistry,
        DeviceState,
        LabDevice,
        build_devices,
        connect_devices,
        connection_error,
    )
    from ._switches import ConnectionReport, DeviceSwitch, DeviceSwitches

# Imported when first used (`orchestrion._lazy`): a listing command must not pay for the
# stack behind the names it does not use (issue 16).
_EXPORTS = {
    "._config": ("DeviceEntry", "LabConfig", "ReadoutRole", "ResourceEntry", "load_lab_config"),
    "._lab": (
        "describe_devices",
        "device_history",
        "device_switches",
        "disable_device",
        "enable_device",
        "load_devices",
        "switch_device",
    ),
    "._registry": (
        "DEFAULT_CONNECT_TIMEOUT",
        "DeviceRegistry",
        "DeviceState",
        "LabDevice",
        "build_devices",
        "connect_devices",
        "connection_error",
    ),
    "._switches": ("ConnectionReport", "DeviceSwitch", "DeviceSwitches"),
}
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "ConnectionReport",
    "DeviceEntry",
    "DeviceRegistry",
    "DeviceState",
    "DeviceSwitch",
    "DeviceSwitches",
    "LabConfig",
    "LabDevice",
    "ReadoutRole",
    "ResourceEntry",
    "build_devices",
    "connect_devices",
    "connection_error",
    "describe_devices",
    "device_history",
    "device_switches",
    "disable_device",
    "enable_device",
    "load_devices",
    "load_lab_config",
    "switch_device",
]
