"""Physics of the simulated trapped-ion qubit.

A two-level system driven in the rotating frame of the drive.  Per shot the qubit is
prepared dark by cooling, evolves under pulses and waits as exact 2x2 unitaries, and is
detected by Poisson photon counting.  Dephasing comes from quasi-static frequency noise
drawn afresh for each shot, so Ramsey fringes decay as exp(-(sigma * t)^2 / 2) the way
they do in a real trap.  The transition frequency follows a magnetic field that drifts
slowly (first-order Zeeman shift), so yesterday's calibration is a little off today.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from orchestrion.sequence import Cool, Detect, Pulse, PulseSequence, Wait

TWO_PI = 2.0 * math.pi


class IonTrapModel(BaseModel):
    """True constants of the simulated ion: what calibrations try to find."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rest_frequency: float = Field(12.642_815e9, description="Transition frequency at the reference field (Hz)")
    max_rabi_frequency: float = Field(100e3, gt=0, description="Rabi frequency at full amplitude (Hz)")
    frequency_noise: float = Field(200.0, ge=0, description="Quasi-static frequency noise, rms per shot (Hz)")
    bright_rate: float = Field(100e3, gt=0, description="Photon count rate of the bright state (1/s)")
    dark_rate: float = Field(5e3, ge=0, description="Background count rate of the dark state (1/s)")
    reference_field: float = Field(10.0, description="Magnetic field at which rest_frequency holds (uT)")
    zeeman_coefficient: float = Field(14e3, description="Frequency shift per field change (Hz/uT)")
    field_drift_amplitude: float = Field(0.1, ge=0, description="Amplitude of the slow field drift (uT)")
    field_drift_period: float = Field(900.0, gt=0, description="Period of the slow field drift (s)")
    field_noise: float = Field(0.002, ge=0, description="Fast field noise seen by the monitor (uT rms)")
    seed: int | None = Field(None, description="Seed of the random generator; None draws one")


@dataclass
class ShotResults:
    """What detection produced for one data point."""

    counts: NDArray[np.int64]
    bright: NDArray[np.bool_]
    bright_probability: float  # mean excitation before detection, noise-free expectation

    @property
    def bright_fraction(self) -> float:
        return float(np.mean(self.bright))


@dataclass
class IonTrap:
    """The simulated world: one ion in a drifting field, shared by the lab's devices."""

    model: IonTrapModel = field(default_factory=IonTrapModel)
    time_scale: float = 1.0  # hardware durations are multiplied by this (0.01: 100x faster)
    clock: Callable[[], float] = time.time
    epoch: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.model.seed)

    def magnetic_field(self, at: float | None = None) -> float:
        """The field the ion sees (uT), without the monitor's readout noise."""
        t = (self.clock() if at is None else at) - self.epoch
        m = self.model
        return m.reference_field + m.field_drift_amplitude * math.sin(TWO_PI * t / m.field_drift_period)

    def measured_field(self) -> float:
        """The field as a magnetometer reads it (uT)."""
        return self.magnetic_field() + float(self.rng.normal(0.0, self.model.field_noise))

    def qubit_frequency(self, at: float | None = None) -> float:
        """The true transition frequency now (Hz)."""
        m = self.model
        return m.rest_frequency + m.zeeman_coefficient * (self.magnetic_field(at) - m.reference_field)

    def excitation(
        self, sequence: PulseSequence, drive_offset: float = 0.0, shots: int | None = None
    ) -> NDArray[np.float64]:
        """Probability of the bright state at detection, one value per shot.

        ``drive_offset`` (Hz) is added to every pulse frequency: the error of the local
        oscillator that the drive chain mixes with.
        """
        n = sequence.shots if shots is None else shots
        f_qubit = self.qubit_frequency()
        noise = self.rng.normal(0.0, self.model.frequency_noise, n) if self.model.frequency_noise else np.zeros(n)
        # State vectors per shot; index 0 is the dark state |0>, index 1 the bright |1>.
        psi = np.zeros((n, 2), dtype=np.complex128)
        psi[:, 0] = 1.0
        # The drive's phase reference runs on during waits, so free evolution is a z
        # rotation at the detuning of the most recent pulse; before any pulse the state is
        # |0> and a z rotation changes nothing.
        detuning: NDArray[np.float64] | None = None
        for op in sequence.operations:
            if isinstance(op, Cool):
                psi[:] = 0.0
                psi[:, 0] = 1.0
            elif isinstance(op, Pulse):
                detuning = TWO_PI * (op.frequency + drive_offset - f_qubit - noise)
                rabi = TWO_PI * self.model.max_rabi_frequency * op.amplitude
                psi = _evolve(psi, rabi, detuning, op.phase, op.duration)
            elif isinstance(op, Wait) and detuning is not None:
                psi = _evolve(psi, 0.0, detuning, 0.0, op.duration)
        return np.abs(psi[:, 1]) ** 2

    def detect(self, excitation: NDArray[np.float64], detection: Detect) -> ShotResults:
        """Project each shot and count photons for the detection window."""
        bright = self.rng.random(excitation.shape[0]) < excitation
        rate = np.where(bright, self.model.bright_rate, self.model.dark_rate)
        counts = self.rng.poisson(rate * detection.duration).astype(np.int64)
        return ShotResults(
            counts=counts, bright=counts > detection.threshold, bright_probability=float(np.mean(excitation))
        )

    def run(self, sequence: PulseSequence, drive_offset: float = 0.0) -> ShotResults:
        """Execute every shot of a sequence (no waiting: the sequencer device keeps time)."""
        return self.detect(self.excitation(sequence, drive_offset), sequence.detection)

    def detection_probabilities(self, detection: Detect) -> tuple[float, float]:
        """P(counted bright | bright) and P(counted bright | dark) for a detection window."""
        from scipy.stats import poisson

        threshold = detection.threshold
        return (
            float(poisson.sf(threshold, self.model.bright_rate * detection.duration)),
            float(poisson.sf(threshold, self.model.dark_rate * detection.duration)),
        )


def simulated_ion_trap(time_scale: float = 1.0, seed: int | None = None, **constants: Any) -> IonTrap:
    """The simulated ion, from configuration: its true constants (`IonTrapModel` fields),
    the time scale of the hardware that acts on it and the seed of its random numbers."""
    return IonTrap(model=IonTrapModel(seed=seed, **constants), time_scale=time_scale)


def rabi_excitation(rabi: float, detuning: float, duration: float) -> float:
    """Textbook Rabi formula: excitation after a square pulse from the ground state.

    ``rabi`` and ``detuning`` are angular frequencies (rad/s), ``duration`` in s.
    """
    generalized = math.hypot(rabi, detuning)
    if generalized == 0.0:
        return 0.0
    return (rabi / generalized) ** 2 * math.sin(generalized * duration / 2.0) ** 2


def _evolve(
    psi: NDArray[np.complex128], rabi: float, detuning: NDArray[np.float64] | float, phase: float, duration: float
) -> NDArray[np.complex128]:
    """Apply exp(-i H t) with H = (rabi (cos p X + sin p Y) - detuning Z) / 2 to every shot."""
    delta = np.broadcast_to(np.asarray(detuning, dtype=np.float64), (psi.shape[0],))
    generalized = np.sqrt(rabi**2 + delta**2)
    half = generalized * duration / 2.0
    cos = np.cos(half)
    # sin(x)/W with the W -> 0 limit handled: no drive, no detuning means identity.
    with np.errstate(invalid="ignore", divide="ignore"):
        sin_over = np.where(generalized > 0, np.sin(half) / generalized, duration / 2.0)
    u00 = cos + 1j * delta * sin_over
    u11 = cos - 1j * delta * sin_over
    u01 = -1j * rabi * np.exp(-1j * phase) * sin_over
    u10 = -1j * rabi * np.exp(1j * phase) * sin_over
    out = np.empty_like(psi)
    out[:, 0] = u00 * psi[:, 0] + u01 * psi[:, 1]
    out[:, 1] = u10 * psi[:, 0] + u11 * psi[:, 1]
    return out
