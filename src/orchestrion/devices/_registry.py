"""Building and connecting the lab's devices from their configuration."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bluesky.protocols import Movable, Readable
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import Device, Signal, SignalR

from orchestrion.errors import DeviceConfigError
from orchestrion.sim import IonTrap

from ._config import DeviceEntry, LabConfig, ReadoutRole

logger = logging.getLogger(__name__)


class DeviceState(StrEnum):
    CONNECTED = "connected"
    DISABLED = "disabled"  # switched off in the configuration
    FAILED = "failed"  # could not connect; left out of runs


@dataclass
class LabDevice:
    name: str
    entry: DeviceEntry
    device: Any
    state: DeviceState
    error: str = ""

    @property
    def role(self) -> ReadoutRole:
        return self.entry.role


@dataclass
class DeviceRegistry:
    """The lab's devices by name, with their roles and states."""

    trap: IonTrap
    devices: dict[str, LabDevice] = field(default_factory=dict)

    def __iter__(self) -> Iterator[LabDevice]:
        return iter(self.devices.values())

    def __contains__(self, name: object) -> bool:
        return name in self.devices

    def usable(self, name: str) -> Any:
        """The device object, if it is connected; otherwise a clear error."""
        lab_device = self.devices.get(name)
        if lab_device is None:
            raise DeviceConfigError(f"no device named '{name}' in the lab configuration")
        if lab_device.state is not DeviceState.CONNECTED:
            reason = f": {lab_device.error}" if lab_device.error else ""
            raise DeviceConfigError(f"device '{name}' is {lab_device.state.value}{reason}")
        return lab_device.device

    def with_role(self, role: ReadoutRole) -> list[Any]:
        return [d.device for d in self if d.role is role and d.state is DeviceState.CONNECTED]

    def async_signals(self) -> list[Any]:
        """The readable signals of the connected async devices, to monitor during a run."""
        signals: list[Any] = []
        for lab_device in self:
            if lab_device.role is ReadoutRole.ASYNC and lab_device.state is DeviceState.CONNECTED:
                signals.extend(_readable_signals(lab_device.device))
        return signals

    def namespace(self) -> dict[str, Any]:
        """Connected devices by name, for a session's or the queue server's namespace."""
        return {d.name: d.device for d in self if d.state is DeviceState.CONNECTED}

    def resolve_settable(self, dotted: str) -> Any | None:
        """The numeric, movable, readable child for an id like 'rf.frequency', or None."""
        head, _, rest = dotted.partition(".")
        lab_device = self.devices.get(head)
        if lab_device is None:
            return None
        target = lab_device.device
        for part in rest.split(".") if rest else []:
            target = getattr(target, part, None)
            if target is None:
                return None
        if not (isinstance(target, Movable) and isinstance(target, Readable)):
            return None
        # Scans and read-back checks are numeric: a string signal such as a sequencer's
        # program is movable but no scan axis.
        if isinstance(target, Signal) and target.datatype not in (int, float):
            return None
        return target


def build_devices(
    config: LabConfig, *, time_scale: float = 1.0, seed: int | None = None, strict: bool = True
) -> DeviceRegistry:
    """Instantiate every enabled device, in file order, resolving '@name' references.

    A device that cannot be built stops the load with an error naming the device and
    the file of its entry.  With ``strict=False`` (an interactive session that should
    start with what works) it is marked failed instead, with that error, and devices
    that refer to it fail in turn.  Connecting is a separate step (`connect_devices`).
    """
    model = config.simulation if seed is None else config.simulation.model_copy(update={"seed": seed})
    registry = DeviceRegistry(trap=IonTrap(model=model, time_scale=time_scale))
    for name, entry in config.devices.items():
        where = f"device '{name}' ({config.sources.get(name, 'configuration')})"
        if not entry.enabled:
            registry.devices[name] = LabDevice(name, entry, None, DeviceState.DISABLED)
            continue
        try:
            device = _build(name, entry, registry, where)
        except DeviceConfigError as exc:
            if strict:
                raise
            logger.warning("%s", exc)
            registry.devices[name] = LabDevice(name, entry, None, DeviceState.FAILED, str(exc))
            continue
        registry.devices[name] = LabDevice(name, entry, device, DeviceState.CONNECTED)
    return registry


def _build(name: str, entry: DeviceEntry, registry: DeviceRegistry, where: str) -> Any:
    cls = _import_class(entry.class_, where)
    kwargs = {key: _resolve(value, registry, where) for key, value in entry.args.items()}
    try:
        inspect.signature(cls).bind(**kwargs, name=name)
        return cls(**kwargs, name=name)
    except Exception as exc:
        raise DeviceConfigError(f"{where}: cannot build {entry.class_}: {exc}") from None


def connect_devices(registry: DeviceRegistry, timeout: float = 10.0) -> None:
    """Connect the ophyd-async devices in the RunEngine's loop; failures are disabled, not fatal."""

    async def connect_all() -> dict[str, BaseException | None]:
        targets = {d.name: d.device for d in registry if isinstance(d.device, Device)}
        results = await asyncio.gather(
            *(dev.connect(timeout=timeout) for dev in targets.values()), return_exceptions=True
        )
        return {name: (r if isinstance(r, BaseException) else None) for name, r in zip(targets, results, strict=True)}

    for name, error in call_in_bluesky_event_loop(connect_all()).items():
        if error is not None:
            logger.warning("device %s failed to connect and is left out: %s", name, error)
            lab_device = registry.devices[name]
            lab_device.state = DeviceState.FAILED
            lab_device.error = str(error) or type(error).__name__


def _import_class(dotted: str, where: str) -> Any:
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name:
        raise DeviceConfigError(f"{where}: class '{dotted}' must be a dotted path like 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DeviceConfigError(f"{where}: cannot import module '{module_name}': {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise DeviceConfigError(f"{where}: module '{module_name}' has no class '{attribute}'") from None


def _resolve(value: Any, registry: DeviceRegistry, where: str) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        target = value[1:]
        if target == "simulation":
            return registry.trap
        lab_device = registry.devices.get(target)
        if lab_device is None:
            raise DeviceConfigError(f"{where}: refers to '{value}', which is not defined before it")
        if lab_device.device is None:
            raise DeviceConfigError(f"{where}: refers to '{value}', which is {lab_device.state.value}")
        return lab_device.device
    return value


def _readable_signals(device: Any) -> list[Any]:
    if isinstance(device, SignalR):
        return [device]
    if isinstance(device, Device):
        return [signal for _, child in device.children() for signal in _readable_signals(child)]
    return [device] if hasattr(device, "subscribe") else []
