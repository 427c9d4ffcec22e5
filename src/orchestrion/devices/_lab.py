"""The devices of a configured lab, and switching them on and off: the public entry points.

The CLI, the shell, the queue-server worker and the API server all call these, so a
device listed, refused or switched means the same thing everywhere.
"""

from __future__ import annotations

from typing import Any

from orchestrion.config import OrchestrionConfig
from orchestrion.errors import InputError

from ._config import load_lab_config
from ._registry import DeviceRegistry, build_devices
from ._switches import DeviceSwitch, DeviceSwitches


def device_switches(config: OrchestrionConfig) -> DeviceSwitches:
    """The lab's record of operators' switches and connection reports (under its home)."""
    return DeviceSwitches.in_home(config.home)


def load_devices(config: OrchestrionConfig, *, strict: bool = True, connection_reports: bool = False) -> DeviceRegistry:
    """Build the configured lab's devices (not connected), with the operators' switches applied.

    '${setting}' arguments take the configuration's values.  ``strict=False`` starts with
    what can be built (see `build_devices`).  ``connection_reports`` is for processes
    that list or submit without connecting (the API server): devices that the last
    process to connect them could not reach are then failed here too, with its reason.
    """
    registry = build_devices(
        load_lab_config(config.devices_dir),
        # The settings, and where file-writing detectors write (a path provider's directory).
        settings={**dict(config), "detectors_dir": config.detectors_dir},
        strict=strict,
        switches=device_switches(config),
        connect_timeout=config.device_connect_timeout,
    )
    registry.use_connection_reports = connection_reports
    registry.refresh()
    return registry


def switch_device(config: OrchestrionConfig, name: str, *, enabled: bool, user: str, reason: str = "") -> DeviceSwitch:
    """Enable or disable a configured device without editing files; kept across restarts.

    Takes effect at the next run in every process of the lab: a disabled device is left
    out, and an experiment that needs it is refused naming it.  A device enabled again
    is used at once where it was connected, otherwise when the lab next opens.
    """
    lab = load_lab_config(config.devices_dir)
    if name not in lab.devices:
        known = ", ".join(lab.devices) or "none"
        raise InputError(f"no device named '{name}' in the lab configuration (devices: {known})")
    if not user.strip():
        raise InputError("a device switch needs the name of who made it")
    if len(reason) > 500 or "\n" in reason:
        raise InputError("the reason for a device switch is one line of at most 500 characters")
    return device_switches(config).record(name, enabled=enabled, user=user.strip(), reason=reason.strip())


def enable_device(config: OrchestrionConfig, name: str, *, user: str, reason: str = "") -> DeviceSwitch:
    """Switch a device on (see `switch_device`)."""
    return switch_device(config, name, enabled=True, user=user, reason=reason)


def disable_device(config: OrchestrionConfig, name: str, *, user: str, reason: str = "") -> DeviceSwitch:
    """Switch a device off (see `switch_device`)."""
    return switch_device(config, name, enabled=False, user=user, reason=reason)


def device_history(config: OrchestrionConfig, name: str | None = None) -> list[DeviceSwitch]:
    """Every switch made in this lab, oldest first (of one device, if named)."""
    return device_switches(config).history(name)


def describe_devices(registry: DeviceRegistry) -> list[dict[str, Any]]:
    """Each device with class, role, state, whether it is enabled, and why not in use."""
    return [lab_device.describe() for lab_device in registry]
