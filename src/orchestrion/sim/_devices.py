"""Simulated lab devices on ophyd-async: they keep real time, as hardware does."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from bluesky.protocols import Location, Reading
from ophyd_async.core import (
    Array1D,
    AsyncStatus,
    Callback,
    Reference,
    SignalRW,
    SoftSignalBackend,
    StandardReadable,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.core import StandardReadableFormat as Format

from orchestrion.sequence import parse_sequence

from ._physics import IonTrap


@dataclass(frozen=True)
class Execution:
    """When the sequencer was busy with one point (monotonic seconds)."""

    started: float
    finished: float
    sequence_hash: str


class RFChannel(StandardReadable):
    """One settable output with a set-point, a read-back and a settle time."""

    def __init__(
        self,
        trap: IonTrap,
        initial: float,
        units: str,
        minimum: float,
        maximum: float,
        tolerance: float,
        settle_time: float,
        glitch_probability: float = 0.0,
        name: str = "",
    ) -> None:
        self._trap = trap
        self.minimum, self.maximum, self.units = minimum, maximum, units
        self.tolerance = tolerance
        self.settle_time = settle_time
        self.glitch_probability = glitch_probability
        self.setpoint = soft_signal_rw(float, initial, units=units)
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.readback, self._set_readback = soft_signal_r_and_setter(float, initial, units=units)
        super().__init__(name=name)

    def check_value(self, value: float) -> None:
        """Raise ValueError if the value is outside the channel's range."""
        if not self.minimum <= value <= self.maximum:
            raise ValueError(
                f"{value:g} {self.units} is outside the range [{self.minimum:g}, {self.maximum:g}] {self.units}"
            )

    @AsyncStatus.wrap
    async def set(self, value: float) -> None:
        try:
            self.check_value(value)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        await self.setpoint.set(value)
        await asyncio.sleep(self.settle_time * self._trap.time_scale)
        # A real synthesizer occasionally misses a set (a dropped command, an unlocked
        # PLL); the read-back shows it and the scan retries.
        missed = self._trap.rng.random() < self.glitch_probability
        error = 1000.0 * self.tolerance if missed else self._trap.rng.normal(0.0, self.tolerance / 10)
        self._set_readback(value + float(error))

    async def locate(self) -> Location[float]:
        return Location(setpoint=await self.setpoint.get_value(), readback=await self.readback.get_value())


class RFSynthesizer(StandardReadable):
    """An external RF synthesizer: the drive chain's local oscillator.

    The qubit drive is mixed with this oscillator, so its deviation from the nominal
    frequency shifts every pulse: scanning ``<name>.frequency`` is a spectroscopy scan.
    """

    def __init__(
        self,
        trap: IonTrap,
        nominal_frequency: float = 200e6,
        frequency_range: tuple[float, float] = (1e6, 6e9),
        frequency_tolerance: float = 1.0,
        settle_time: float = 0.01,
        glitch_probability: float = 0.0,
        name: str = "",
    ) -> None:
        self.nominal_frequency = nominal_frequency
        with self.add_children_as_readables():
            self.frequency = RFChannel(
                trap,
                nominal_frequency,
                "Hz",
                *frequency_range,
                tolerance=frequency_tolerance,
                settle_time=settle_time,
                glitch_probability=glitch_probability,
            )
            self.power = RFChannel(trap, 0.0, "dBm", -60.0, 20.0, tolerance=0.05, settle_time=settle_time)
        super().__init__(name=name)

    async def frequency_offset(self) -> float:
        """Read-back minus nominal frequency (Hz)."""
        return float(await self.frequency.readback.get_value()) - self.nominal_frequency


class Sequencer(StandardReadable):
    """Executes one JSON pulse sequence per trigger on the simulated ion.

    Put the sequence's JSON into ``program``, trigger, read the per-shot counts and
    the bright fraction.  A trigger lasts as long as the sequence would on real
    hardware (its duration times the shots), scaled by the trap's ``time_scale``.
    """

    def __init__(self, trap: IonTrap, lo: RFSynthesizer | None = None, name: str = "") -> None:
        self._trap = trap
        # A Reference, not an attribute: the oscillator is another device, not our child.
        self._lo = Reference(lo) if lo is not None else None
        self.executions: list[Execution] = []
        self.program = soft_signal_rw(str, "")
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.bright_fraction, self._set_bright_fraction = soft_signal_r_and_setter(float)
        with self.add_children_as_readables():
            self.counts, self._set_counts = soft_signal_r_and_setter(Array1D[np.int64], units="counts")
            self.mean_counts, self._set_mean_counts = soft_signal_r_and_setter(float, units="counts")
            self.sequence_hash, self._set_sequence_hash = soft_signal_r_and_setter(str)
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        sequence = parse_sequence(await self.program.get_value())
        offset = await self._lo().frequency_offset() if self._lo is not None else 0.0
        started = time.monotonic()
        results = self._trap.run(sequence, drive_offset=offset)
        digest = sequence.content_hash  # the simulation's bookkeeping, done while the hardware runs
        # The hardware is busy for the whole sequence, whatever the simulation cost.
        remaining = sequence.duration * self._trap.time_scale - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        self.executions.append(Execution(started, time.monotonic(), digest))
        self._set_counts(results.counts)
        self._set_mean_counts(float(np.mean(results.counts)))
        self._set_bright_fraction(results.bright_fraction)
        self._set_sequence_hash(digest)

    def idle_gaps(self) -> list[float]:
        """Seconds the sequencer waited between consecutive executions."""
        runs = self.executions
        return [b.started - a.finished for a, b in itertools.pairwise(runs)]


class PolledReading(SoftSignalBackend[float]):
    """A soft signal polled from a getter whose first monitor update is a fresh reading.

    ophyd-async's soft backend hands a new subscriber its cached value, which for a
    polled getter is the initial value (0.0) until the first poll period has passed: a
    monitored run's first points would record a value nobody measured.
    """

    def __init__(self, getter: Callable[[], float], poll_period: float, units: str) -> None:
        super().__init__(float, units=units, getter=getter, poll_period=poll_period)
        self._read_now = getter

    def set_callback(self, callback: Callback[Reading[float]] | None) -> None:
        if callback is not None:
            self.set_value(self._read_now())
        super().set_callback(callback)


class FieldMonitor(StandardReadable):
    """A magnetometer beside the trap, updating on its own clock (asynchronous readout)."""

    def __init__(self, trap: IonTrap, period: float = 0.2, name: str = "") -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.field = SignalRW(PolledReading(trap.measured_field, period, "uT"))
        super().__init__(name=name)
