"""The simulated ion behaves as the textbook says, within shot noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrion.sequence import Cool, Detect, Pulse, PulseSequence, Wait
from orchestrion.sim import IonTrap, IonTrapModel, rabi_excitation

MODEL = IonTrapModel(field_drift_amplitude=0.0, frequency_noise=0.0, seed=7)
SHOTS = 4000


def _trap(model: IonTrapModel = MODEL) -> IonTrap:
    return IonTrap(model=model)


def _pulse_sequence(trap: IonTrap, detuning: float, duration: float, amplitude: float = 0.5) -> PulseSequence:
    return PulseSequence(
        shots=SHOTS,
        operations=(
            Cool(duration=1e-3),
            Pulse(frequency=trap.qubit_frequency() + detuning, duration=duration, amplitude=amplitude),
            Detect(duration=200e-6, threshold=5),
        ),
    )


def _expected_bright_fraction(trap: IonTrap, excitation: float, detect: Detect) -> float:
    p_bright, p_dark = trap.detection_probabilities(detect)
    return excitation * p_bright + (1 - excitation) * p_dark


def _tolerance(p: float) -> float:
    """Five standard deviations of a binomial fraction, plus a floor for p near 0 or 1."""
    return 5 * math.sqrt(max(p * (1 - p), 1e-3) / SHOTS)


def test_on_resonance_bright_fraction_peaks_at_the_predicted_pi_time() -> None:
    trap = _trap()
    rabi = 0.5 * MODEL.max_rabi_frequency  # amplitude 0.5
    pi_time = 1 / (2 * rabi)
    durations = np.linspace(0, 2 * pi_time, 41)
    fractions = [trap.run(_pulse_sequence(trap, 0.0, float(t))).bright_fraction for t in durations]
    peak = durations[int(np.argmax(fractions))]
    assert peak == pytest.approx(pi_time, abs=durations[1] - durations[0])
    detect = Detect(duration=200e-6, threshold=5)
    for t, measured in zip(durations, fractions, strict=True):
        expected = _expected_bright_fraction(trap, rabi_excitation(2 * math.pi * rabi, 0.0, float(t)), detect)
        assert measured == pytest.approx(expected, abs=_tolerance(expected))


@pytest.mark.parametrize("detuning", [0.0, 25e3, 50e3, 100e3])
def test_off_resonance_contrast_drops_as_the_rabi_formula_says(detuning: float) -> None:
    trap = _trap()
    rabi = 0.5 * MODEL.max_rabi_frequency
    pi_time = 1 / (2 * rabi)
    result = trap.run(_pulse_sequence(trap, detuning, pi_time))
    excitation = rabi_excitation(2 * math.pi * rabi, 2 * math.pi * detuning, pi_time)
    expected = _expected_bright_fraction(trap, excitation, Detect(duration=200e-6, threshold=5))
    assert result.bright_fraction == pytest.approx(expected, abs=_tolerance(expected))
    if detuning >= 50e3:
        assert result.bright_fraction < 0.6


def test_photon_counts_are_poisson_with_the_bright_and_dark_rates() -> None:
    trap = _trap()
    dark = trap.run(_pulse_sequence(trap, 0.0, 0.0))  # no pulse: every shot dark
    expected_dark = MODEL.dark_rate * 200e-6
    assert dark.counts.mean() == pytest.approx(expected_dark, abs=5 * math.sqrt(expected_dark / SHOTS))
    assert dark.counts.var() == pytest.approx(expected_dark, rel=0.2)  # Poisson: variance = mean
    bright = trap.run(_pulse_sequence(trap, 0.0, 1 / MODEL.max_rabi_frequency))  # pi pulse
    expected_bright = MODEL.bright_rate * 200e-6
    assert bright.counts.mean() == pytest.approx(expected_bright, rel=0.05)


def test_ramsey_fringes_oscillate_at_the_detuning_and_decay_with_frequency_noise() -> None:
    model = MODEL.model_copy(update={"frequency_noise": 2000.0})
    trap = _trap(model)
    detuning = 20e3
    half_pi = 1 / (4 * 0.5 * model.max_rabi_frequency) / 1.0

    def fringe(wait: float) -> float:
        sequence = PulseSequence(
            shots=SHOTS,
            operations=(
                Cool(duration=1e-3),
                Pulse(frequency=trap.qubit_frequency() + detuning, duration=half_pi, amplitude=0.5),
                Wait(duration=wait),
                Pulse(frequency=trap.qubit_frequency() + detuning, duration=half_pi, amplitude=0.5),
                Detect(duration=200e-6, threshold=5),
            ),
        )
        return float(np.mean(trap.excitation(sequence)))

    period = 1 / detuning
    # Early on, a full fringe period brings the excitation back; a half period flips it.
    assert abs(fringe(period) - fringe(0.0)) < 0.1
    assert abs(fringe(period / 2) - fringe(0.0)) > 0.5
    # Quasi-static noise of sigma Hz dephases as exp(-(2 pi sigma t)^2 / 2).
    late = 400e-6 - (400e-6 % period)
    contrast_late = abs(fringe(late) - fringe(late + period / 2))
    expected = math.exp(-((2 * math.pi * model.frequency_noise * late) ** 2) / 2)
    assert contrast_late == pytest.approx(expected, abs=0.1)


def test_transition_frequency_follows_the_drifting_field() -> None:
    model = IonTrapModel(field_drift_amplitude=0.1, field_drift_period=100.0, seed=1)
    now = [0.0]
    trap = IonTrap(model=model, clock=lambda: now[0], epoch=0.0)
    start = trap.qubit_frequency()
    now[0] = 25.0  # a quarter period: the field is at its maximum
    assert trap.qubit_frequency() - start == pytest.approx(model.zeeman_coefficient * 0.1)
    assert trap.magnetic_field() == pytest.approx(model.reference_field + 0.1)
