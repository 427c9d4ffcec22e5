"""EPICS devices for the lab configuration, on ophyd-async's EPICS support.

Three small ophyd-async devices a configuration file can name with a few PV names,
for the PVs a beamline has that are not a full motor record or areaDetector (those
are ophyd-async's own `ophyd_async.epics.motor.Motor`, `ophyd_async.epics.adsimdetector`,
..., which a configuration names the same way):

- `EpicsSignal`: one PV read back and monitored (a beam current, a temperature);
- `EpicsAxis`: a settable set-point with its read-back (and optionally a done-moving
  PV), usable as a scan axis with read-back checks;
- `EpicsDetector`: a value read at every point, optionally after a put-with-callback
  to an acquire PV.

PV names may carry a protocol (`ca://`, `pva://`); Channel Access is the default.
Each device's main reading is named after the device (`stage`, not `stage-readback`),
as in a bluesky profile.  Kept out of `orchestrion.devices`' namespace so that a lab
without EPICS never loads the Channel Access library.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from bluesky.protocols import Location
from ophyd_async.core import DEFAULT_TIMEOUT, AsyncStatus, SignalR, StandardReadable, observe_value
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

DATATYPES: dict[str, type[Any]] = {"float": float, "int": int, "str": str, "bool": bool}


def _datatype(name: str) -> type[Any]:
    try:
        return DATATYPES[name]
    except KeyError:
        raise ValueError(f"datatype '{name}' is not one of {', '.join(DATATYPES)}") from None


class EpicsSignal(StandardReadable):
    """One PV, read and monitored: a gauge, a beam current, a temperature.

    :param read_pv: the PV (for example ``BL01:RING:CURRENT``)
    :param datatype: ``float`` (default), ``int``, ``str`` or ``bool``
    :param timeout: seconds a read may take before it fails (the connection timeout is
        the configuration entry's ``timeout``)
    """

    def __init__(self, read_pv: str, datatype: str = "float", timeout: float = DEFAULT_TIMEOUT, name: str = "") -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.value = epics_signal_r(_datatype(datatype), read_pv, timeout=timeout)
        super().__init__(name=name)

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        super().set_name(name, child_name_separator=child_name_separator)
        self.value.set_name(name)


class EpicsAxis(StandardReadable):
    """A set-point PV with its read-back PV: a motor-like axis that scans can set.

    A move writes the set-point (with put-callback, so a record that completes when the
    motion does is waited for), then waits until the read-back is within ``tolerance``
    of the target (and ``done_pv`` reads 1, when given), for at most ``move_timeout``
    seconds.  ``limits`` are checked before anything is written.

    :param setpoint_pv: the PV written (for example ``BL01:STAGE:X:SP``)
    :param readback_pv: the PV read back (for example ``BL01:STAGE:X:RBV``)
    :param done_pv: optional PV that reads 1 when the axis is in position
    :param tolerance: largest accepted difference between read-back and target
    :param limits: ``[low, high]`` accepted targets (inclusive)
    :param units: engineering units, for messages
    """

    def __init__(
        self,
        setpoint_pv: str,
        readback_pv: str,
        done_pv: str | None = None,
        tolerance: float = 0.0,
        limits: tuple[float, float] | None = None,
        units: str = "",
        move_timeout: float = 60.0,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = "",
    ) -> None:
        if tolerance < 0 or not math.isfinite(tolerance):
            raise ValueError(f"tolerance must be a finite number >= 0, not {tolerance!r}")
        if limits is not None and (len(limits) != 2 or not limits[0] <= limits[1]):
            raise ValueError(f"limits must be [low, high] with low <= high, not {limits!r}")
        if move_timeout <= 0:
            raise ValueError(f"move_timeout must be > 0, not {move_timeout!r}")
        self.tolerance = tolerance
        self.limits = (float(limits[0]), float(limits[1])) if limits is not None else None
        self.units = units
        self.move_timeout = move_timeout
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.readback = epics_signal_r(float, readback_pv, timeout=timeout)
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.setpoint = epics_signal_rw(float, setpoint_pv, timeout=timeout)
        self.done: SignalR[int] | None = epics_signal_r(int, done_pv, timeout=timeout) if done_pv else None
        super().__init__(name=name)

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        super().set_name(name, child_name_separator=child_name_separator)
        self.readback.set_name(name)

    def check_value(self, value: float) -> None:
        """Raise ValueError if ``value`` is outside the axis's limits."""
        if self.limits is not None and not self.limits[0] <= value <= self.limits[1]:
            low, high = self.limits
            raise ValueError(f"{value:g} {self.units} is outside the limits [{low:g}, {high:g}] {self.units}".strip())

    @AsyncStatus.wrap
    async def set(self, value: float) -> None:
        try:
            self.check_value(value)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        await self.setpoint.set(value, timeout=self.move_timeout)
        try:
            async with asyncio.timeout(self.move_timeout):
                if self.done is not None:
                    async for done in observe_value(self.done):
                        if done:
                            break
                async for readback in observe_value(self.readback):
                    if abs(readback - value) <= self.tolerance:
                        break
        except TimeoutError:
            readback = await self.readback.get_value()
            raise TimeoutError(
                f"{self.name}: read back {readback:g} {self.units}, not {value:g}, "
                f"{self.move_timeout:g} s after the move"
            ) from None

    async def locate(self) -> Location[float]:
        setpoint, readback = await asyncio.gather(self.setpoint.get_value(), self.readback.get_value())
        return Location(setpoint=setpoint, readback=readback)


class EpicsDetector(StandardReadable):
    """A value read at every scan point, optionally acquired first.

    With ``acquire_pv``, a trigger writes 1 to it with put-callback and waits for the
    record to complete (an IOC's acquisition); the value is then read in the point.

    :param value_pv: the PV holding the measured value
    :param acquire_pv: optional PV that starts one acquisition
    :param datatype: ``float`` (default) or ``int``
    :param acquire_timeout: seconds one acquisition may take
    """

    def __init__(
        self,
        value_pv: str,
        acquire_pv: str | None = None,
        datatype: str = "float",
        acquire_timeout: float = 60.0,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = "",
    ) -> None:
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.value = epics_signal_r(_datatype(datatype), value_pv, timeout=timeout)
        self.acquire = epics_signal_rw(int, acquire_pv, timeout=timeout) if acquire_pv else None
        self.acquire_timeout = acquire_timeout
        super().__init__(name=name)

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        super().set_name(name, child_name_separator=child_name_separator)
        self.value.set_name(name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        if self.acquire is not None:
            await self.acquire.set(1, timeout=self.acquire_timeout)
