"""Building and connecting the lab's devices from their configuration.

BEC's rules: a device that cannot be built stops the load with one line naming the
device and the field; a device that cannot connect within its timeout is left out,
listed with the reason, and the rest of the lab starts (unless the lab is strict);
an operator can switch devices off and on again without editing the files.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import importlib
import inspect
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bluesky.protocols import Movable, Readable
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import Device, NotConnectedError, Signal, SignalR
from pydantic import ValidationError

from orchestrion.errors import DeviceConfigError, DeviceConnectionError, InputError

from ._config import DeviceEntry, LabConfig, ReadoutRole, ResourceEntry
from ._switches import ConnectionReport, DeviceSwitch, DeviceSwitches

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 10.0
CONNECT_GRACE = 1.0  # s past a device's timeout before it is given up on regardless


class DeviceState(StrEnum):
    CONNECTED = "connected"  # built (and connected, once `connect_devices` ran): used by runs
    DISABLED = "disabled"  # switched off, in the configuration or by an operator
    FAILED = "failed"  # could not be built or connected: left out of runs, `error` says why


@dataclass
class LabDevice:
    name: str
    entry: DeviceEntry
    device: Any
    state: DeviceState
    error: str = ""
    switch: DeviceSwitch | None = None  # the operator's latest switch, if any
    build_error: str = ""  # could not be built (lenient loads only)
    connect_error: str = ""  # could not connect in this process
    connected: bool = False  # connected in this process

    @property
    def role(self) -> ReadoutRole:
        return self.entry.role

    @property
    def enabled(self) -> bool:
        """Whether the lab should use it: the operator's switch, else the configuration."""
        return self.switch.enabled if self.switch is not None else self.entry.enabled

    @property
    def reason(self) -> str:
        """Why a device is not in use (empty when it is)."""
        if self.state is DeviceState.FAILED:
            return self.error
        if self.state is DeviceState.DISABLED:
            return self.switch.describe() if self.switch is not None else "disabled in the configuration"
        return ""

    def why_not(self) -> str:
        """'is disabled: ...' or 'failed: ...', for messages that refuse to use it."""
        verb = "failed" if self.state is DeviceState.FAILED else f"is {self.state.value}"
        return f"{verb}: {self.reason}" if self.reason else verb

    def describe(self) -> dict[str, Any]:
        """The device as `orchestrion devices --json` and the API list it."""
        return {
            "name": self.name,
            "class": self.entry.class_,
            "role": self.role.value,
            "state": self.state.value,
            "enabled": self.enabled,
            "description": self.entry.description,
            "reason": self.reason,
            "error": self.error,
            "switch": self.switch.to_dict() if self.switch is not None else None,
        }


@dataclass
class DeviceRegistry:
    """The lab's devices by name, with their roles and states, and the resources they share."""

    devices: dict[str, LabDevice] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    switches: DeviceSwitches | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    connected_here: bool = False  # `connect_devices` ran in this process
    # A process that submits to the hardware's process (queue server, API) and connects
    # nothing itself: devices that process could not connect count as failed here too.
    use_connection_reports: bool = False

    def __iter__(self) -> Iterator[LabDevice]:
        return iter(self.devices.values())

    def __contains__(self, name: object) -> bool:
        return name in self.devices

    def resource(self, name: str) -> Any:
        """A shared resource by name (for example the simulated ion trap)."""
        try:
            return self.resources[name]
        except KeyError:
            raise DeviceConfigError(f"no resource named '{name}' in the lab configuration") from None

    def usable(self, name: str) -> Any:
        """The device object, if it is connected; otherwise a clear error."""
        lab_device = self.devices.get(name)
        if lab_device is None:
            raise DeviceConfigError(f"no device named '{name}' in the lab configuration")
        if lab_device.state is not DeviceState.CONNECTED:
            raise DeviceConfigError(f"device '{name}' {lab_device.why_not()}")
        return lab_device.device

    def require(self, names: Iterable[str], *, by: str) -> None:
        """Refuse (`InputError`, naming the device and why) if any named device is not in use."""
        for name in names:
            lab_device = self.devices.get(name)
            if lab_device is None:
                raise InputError(f"{by} needs device '{name}', which the lab configuration does not define")
            if lab_device.state is not DeviceState.CONNECTED:
                raise InputError(f"{by} needs device '{name}', which {lab_device.why_not()}")

    def refresh(self) -> None:
        """Apply the operators' latest switches (and, with ``use_connection_reports``, the
        last connection reports of the process that connected the devices).

        A device switched off is left out of the next run at once.  One switched back on
        is used again if it was built (and, here, connected); otherwise it is built and
        connected when the lab next opens.
        """
        if self.switches is None:
            return
        current = self.switches.current()
        use_reports = self.use_connection_reports and not self.connected_here
        reports = self.switches.connections() if use_reports else {}
        for lab_device in self:
            lab_device.switch = current.get(lab_device.name, lab_device.switch)
            _derive_state(lab_device, self.connected_here, reports.get(lab_device.name))

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

    def device_of(self, dotted: str) -> str | None:
        """The device name an id like 'rf.frequency' belongs to, if it names one."""
        head = dotted.partition(".")[0]
        return head if head in self.devices else None

    def resolve_settable(self, dotted: str) -> Any | None:
        """The numeric, movable, readable child for an id like 'rf.frequency', or None."""
        head, _, rest = dotted.partition(".")
        lab_device = self.devices.get(head)
        if lab_device is None or lab_device.device is None:
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

    def blame(self, error: BaseException) -> str | None:
        """The device an error during a run came from: the one whose PV or name it cites."""
        texts: list[str] = []
        current: BaseException | None = error
        cancelled = False  # a status cancelled (an abort, a stop, or a timeout's own wait)
        while current is not None and len(texts) < 10:
            cancelled = cancelled or isinstance(current, asyncio.CancelledError)
            texts.append(str(current))
            texts.extend(str(sub) for sub in getattr(current, "exceptions", ()))
            current = current.__cause__ or current.__context__
        text = "\n".join(texts)
        for lab_device in self:
            if lab_device.device is None:
                continue
            for signal in _readable_signals(lab_device.device, settable=True):
                source = str(getattr(signal, "source", ""))
                address = source.partition("://")[2]
                if address and address in text:
                    return lab_device.name
        for lab_device in self:
            name = lab_device.name
            # Its signals' names ("camera-acquire"), or an ophyd-async status of it that
            # failed by itself ("<WatchableAsyncStatus, device: camera, ...>": a trigger
            # that raised), not one an abort cancelled.
            status = not cancelled and f"device: {name}," in text
            cited = f"{name}-" in text or f"{name}:" in text or status
            if lab_device.device is not None and cited:
                return name
        return None


def _derive_state(lab_device: LabDevice, connected_here: bool, report: ConnectionReport | None = None) -> None:
    """A device's state from what is known of it: switches, building, connecting."""
    state, error = DeviceState.CONNECTED, ""
    if not lab_device.enabled:
        state = DeviceState.DISABLED
    elif lab_device.build_error:
        state, error = DeviceState.FAILED, lab_device.build_error
    elif lab_device.connect_error:
        state, error = DeviceState.FAILED, lab_device.connect_error
    elif lab_device.device is None or (
        connected_here and isinstance(lab_device.device, Device) and not lab_device.connected
    ):
        switched = lab_device.switch.describe() if lab_device.switch is not None else "enabled"
        state, error = DeviceState.FAILED, f"{switched}; it is built and connected when the lab next opens"
    elif report is not None and not report.connected:
        when = report.at.isoformat(timespec="seconds")
        state, error = DeviceState.FAILED, f"{report.error} (process {report.pid}, at {when})"
    lab_device.state, lab_device.error = state, error


def build_devices(
    config: LabConfig,
    *,
    settings: Mapping[str, Any] | None = None,
    strict: bool = True,
    switches: DeviceSwitches | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> DeviceRegistry:
    """Build the resources, then every enabled device, in file order, resolving '@name'.

    ``settings`` are the values '${name}' arguments refer to (the Orchestrion
    configuration's).  ``switches`` are the operators' enable/disable decisions, which
    win over the files.  A resource or device that cannot be built stops the load with an
    error naming it, its file and the field.  With ``strict=False`` (an interactive
    session that should start with what works) the device is marked failed instead, and
    devices that refer to it fail in turn.  Connecting is a separate step
    (`connect_devices`).
    """
    registry = DeviceRegistry(switches=switches, connect_timeout=connect_timeout)
    current = switches.current() if switches is not None else {}
    failed_resources: dict[str, str] = {}
    context = _Context(registry, settings or {}, failed_resources)
    for name, resource in config.resources.items():
        where = f"resource '{name}' ({config.sources.get(name, 'configuration')})"
        try:
            registry.resources[name] = _build(name, resource, context, where, takes_name=False)
        except DeviceConfigError as exc:
            if strict:
                raise
            logger.warning("%s", exc)
            failed_resources[name] = str(exc)
    for name, entry in config.devices.items():
        where = f"device '{name}' ({config.sources.get(name, 'configuration')})"
        lab_device = LabDevice(name, entry, None, DeviceState.DISABLED, switch=current.get(name))
        registry.devices[name] = lab_device
        # A device an operator switched off is still built (and connected): devices that
        # refer to it keep working, and switching it on again takes effect at once.  One
        # disabled in the files is not: it may not even be installed here.
        if lab_device.enabled or entry.enabled:
            try:
                lab_device.device = _build(name, entry, context, where, takes_name=True)
            except DeviceConfigError as exc:
                if strict and lab_device.enabled:
                    raise
                logger.warning("%s", exc)
                lab_device.build_error = str(exc)
        _derive_state(lab_device, registry.connected_here)
    return registry


@dataclass
class _Context:
    registry: DeviceRegistry
    settings: Mapping[str, Any]
    failed_resources: dict[str, str]


def _build(name: str, entry: DeviceEntry | ResourceEntry, context: _Context, where: str, *, takes_name: bool) -> Any:
    factory = _import_class(entry.class_, where)
    kwargs = {key: _resolve(key, value, context, where) for key, value in entry.args.items()}
    if takes_name:
        kwargs["name"] = name
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        _check_arguments(signature, kwargs, entry.class_, where)
    try:
        return factory(**kwargs)
    except ValidationError as exc:  # pydantic-validated arguments: name the field
        first = exc.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"])
        raise DeviceConfigError(f"{where}: args.{field_name}: {first['msg']}") from None
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeviceConfigError(f"{where}: cannot build {entry.class_}: {message}") from None


def _check_arguments(signature: inspect.Signature, kwargs: dict[str, Any], class_: str, where: str) -> None:
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key in kwargs:
        if key not in parameters and not takes_any:
            accepted = ", ".join(p for p in parameters if p not in ("self", "name")) or "none"
            raise DeviceConfigError(f"{where}: args.{key}: not an argument of {class_} (arguments: {accepted})")
    for key, parameter in parameters.items():
        required = parameter.default is inspect.Parameter.empty and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and key not in kwargs:
            raise DeviceConfigError(f"{where}: args.{key}: required by {class_}")


@functools.cache
def _listing_loop() -> asyncio.AbstractEventLoop:
    """The event loop of a process that connects devices only to list them: one for the
    process, open until it exits.  Channel-access callbacks of PVs that never connected
    still arrive after a connect gave up, and a closed loop makes each one an error."""
    loop = asyncio.new_event_loop()
    atexit.register(loop.close)
    return loop


def connect_devices(
    registry: DeviceRegistry, timeout: float | None = None, *, strict: bool = False, own_loop: bool = False
) -> None:
    """Connect the ophyd-async devices in the RunEngine's loop, each within its timeout.

    A device that does not connect is marked failed with the reason and left out of
    runs; the rest of the lab goes on.  With ``strict`` the load stops instead
    (`DeviceConnectionError`, naming every such device).  The outcome is kept in the
    lab's switches file (when the registry has one), so a submission can refuse an
    experiment whose device the hardware's process could not reach.

    ``own_loop``: in an event loop of this call instead, for a process that only lists the
    devices and builds no RunEngine (whose constructor imports ophyd 1.x: a second).
    """

    def timeout_of(lab_device: LabDevice) -> float:
        return lab_device.entry.timeout or timeout or registry.connect_timeout

    targets = [d for d in registry if isinstance(d.device, Device) and not d.build_error]

    async def connect_one(lab_device: LabDevice) -> str | None:
        seconds = timeout_of(lab_device)
        try:
            # Bounded here too: a lab's own driver may not honour the timeout it is given.
            # The grace lets ophyd-async's own, more precise error come first.
            async with asyncio.timeout(seconds + CONNECT_GRACE):
                await lab_device.device.connect(timeout=seconds)
        except Exception as exc:  # a driver may fail in its own way: each is reported, none is fatal
            return connection_error(exc, seconds)
        return None

    async def connect_all() -> list[str | None]:
        return list(await asyncio.gather(*(connect_one(d) for d in targets)))

    if own_loop:
        outcomes = _listing_loop().run_until_complete(connect_all())
    else:
        outcomes = call_in_bluesky_event_loop(connect_all())
    results = dict(zip((d.name for d in targets), outcomes, strict=True))
    registry.connected_here = True
    for name, error in results.items():
        lab_device = registry.devices[name]
        lab_device.connected, lab_device.connect_error = error is None, error or ""
        if error is not None:
            logger.warning("device %s is left out: %s", name, error)
    for lab_device in registry:
        _derive_state(lab_device, True)
    if registry.switches is not None:
        try:
            registry.switches.report_connections(results, os.getpid())
        except OSError as exc:  # bookkeeping: the lab itself is fine
            logger.warning("could not record the devices' connections in %s: %s", registry.switches.path, exc)
    failed = [registry.devices[name] for name, error in results.items() if error is not None]
    failed = [d for d in failed if d.enabled]
    if strict and failed:
        listing = "; ".join(f"{d.name}: {d.error}" for d in failed)
        raise DeviceConnectionError(f"devices that did not connect (strict devices): {listing}")


def connection_error(error: BaseException, timeout: float) -> str:
    """One line for a failed connection: what could not be reached, within how long."""
    if isinstance(error, NotConnectedError):
        leaves = sorted(set(_leaf_messages(error)))
        shown = ", ".join(leaves[:4]) + (f" and {len(leaves) - 4} more" if len(leaves) > 4 else "")
        # Unreachable PVs are reported as their addresses; anything else (a PV of the
        # wrong type) as itself.
        if all("://" in leaf and " " not in leaf for leaf in leaves):
            return f"could not connect within {timeout:g} s: {shown}"
        return f"could not connect: {shown or 'not connected'}"
    if isinstance(error, TimeoutError):
        return f"could not connect within {timeout:g} s"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"could not connect: {type(error).__name__}{': ' + text if text else ''}"


def _leaf_messages(error: NotConnectedError) -> Iterator[str]:
    errors = error.sub_errors if isinstance(error.sub_errors, dict) else {}
    if not errors:
        yield str(error).strip().splitlines()[0] if str(error).strip() else "not connected"
    for sub in errors.values():
        if isinstance(sub, NotConnectedError):
            yield from _leaf_messages(sub)
        else:
            yield (str(sub).splitlines() or [type(sub).__name__])[0]


def _import_class(dotted: str, where: str) -> Any:
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name:
        raise DeviceConfigError(f"{where}: class: '{dotted}' must be a dotted path like 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DeviceConfigError(f"{where}: class: cannot import module '{module_name}': {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise DeviceConfigError(f"{where}: class: module '{module_name}' has no class '{attribute}'") from None


def _resolve(key: str, value: Any, context: _Context, where: str) -> Any:
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        setting = value[2:-1]
        if setting not in context.settings:
            raise DeviceConfigError(f"{where}: args.{key}: no setting '{setting}'")
        return context.settings[setting]
    if isinstance(value, str) and value.startswith("@"):
        target = value[1:]
        if target in context.registry.resources:
            return context.registry.resources[target]
        if target in context.failed_resources:
            raise DeviceConfigError(f"{where}: args.{key}: refers to '{value}', which could not be built")
        lab_device = context.registry.devices.get(target)
        if lab_device is None:
            raise DeviceConfigError(f"{where}: args.{key}: refers to '{value}', which is not defined before it")
        if lab_device.device is None:
            raise DeviceConfigError(f"{where}: args.{key}: refers to '{value}', which is {lab_device.state.value}")
        return lab_device.device
    return value


def _readable_signals(device: Any, *, settable: bool = False) -> list[Any]:
    """The signals of a device to monitor (readable ones), or to blame (all, with ``settable``)."""
    if isinstance(device, SignalR) or (settable and isinstance(device, Signal)):
        return [device]
    if isinstance(device, Device):
        return [signal for _, child in device.children() for signal in _readable_signals(child, settable=settable)]
    return [device] if hasattr(device, "subscribe") else []
