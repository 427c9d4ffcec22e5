"""Parameters and sequence pieces shared by the trapped-ion experiments."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrion.analysis import FitResult, fit_oscillation, fit_spectroscopy
from orchestrion.experiment import Analyze, ScanPoint
from orchestrion.parameters import ParameterSpec, ParameterType
from orchestrion.sequence import PulseSequence, parse_sequence

logger = logging.getLogger(__name__)

QUBIT = "Qubit"
DETECTION = "Detection"

QUBIT_FREQUENCY = ParameterSpec(
    id="qubit.frequency",
    type=ParameterType.FLOAT,
    default=12.6428e9,
    unit="Hz",
    minimum=12.0e9,
    maximum=13.0e9,
    group=QUBIT,
    description="Qubit transition frequency: the drive is on resonance here",
)
QUBIT_PI_TIME = ParameterSpec(
    id="qubit.pi_time",
    type=ParameterType.FLOAT,
    default=10e-6,
    unit="s",
    minimum=1e-7,
    maximum=1e-2,
    group=QUBIT,
    description="Duration of a pi pulse at qubit.amplitude",
)
QUBIT_AMPLITUDE = ParameterSpec(
    id="qubit.amplitude",
    type=ParameterType.FLOAT,
    default=0.5,
    unit="",
    minimum=0.0,
    maximum=1.0,
    group=QUBIT,
    description="Drive amplitude, fraction of full scale",
)
COOLING_DURATION = ParameterSpec(
    id="cooling.duration",
    type=ParameterType.FLOAT,
    default=1e-3,
    unit="s",
    minimum=1e-5,
    maximum=0.1,
    group="Cooling",
    description="Doppler cooling and optical pumping before each shot",
)
DETECTION_DURATION = ParameterSpec(
    id="detection.duration",
    type=ParameterType.FLOAT,
    default=200e-6,
    unit="s",
    minimum=1e-6,
    maximum=0.01,
    group=DETECTION,
    description="Photon-counting window",
)
DETECTION_THRESHOLD = ParameterSpec(
    id="detection.threshold",
    type=ParameterType.INT,
    default=5,
    unit="counts",
    minimum=0,
    maximum=1000,
    group=DETECTION,
    description="A shot is bright when it counts more photons than this",
)

GLOBAL_PARAMETERS = (
    QUBIT_FREQUENCY,
    QUBIT_PI_TIME,
    QUBIT_AMPLITUDE,
    COOLING_DURATION,
    DETECTION_DURATION,
    DETECTION_THRESHOLD,
)

BRIGHT_FRACTION = "sequencer-bright_fraction"


def rabi_frequency(p: Mapping[str, Any]) -> float:
    """The Rabi frequency (Hz) that qubit.pi_time implies."""
    return 1.0 / (2.0 * float(p["qubit.pi_time"]))


def shot(p: Mapping[str, Any], *middle: dict[str, Any], shots: int) -> PulseSequence:
    """Cool, then ``middle``, then detect; validated as a whole.

    Operations are built as plain data and validated together, so that an error names
    the operation (index and label) and the field at fault.
    """
    return parse_sequence(
        {
            "shots": shots,
            "operations": [
                {"op": "cool", "duration": p["cooling.duration"], "label": "cool"},
                *middle,
                {
                    "op": "detect",
                    "duration": p["detection.duration"],
                    "threshold": p["detection.threshold"],
                    "label": "detect",
                },
            ],
        }
    )


def drive(
    p: Mapping[str, Any], *, detuning: float, duration: float, phase: float = 0.0, label: str = ""
) -> dict[str, Any]:
    """A pulse on the qubit at ``detuning`` (Hz) from qubit.frequency."""
    return {
        "op": "pulse",
        "frequency": p["qubit.frequency"] + detuning,
        "duration": duration,
        "amplitude": p["qubit.amplitude"],
        "phase": phase,
        "label": label,
    }


def wait(duration: float, label: str = "") -> dict[str, Any]:
    """Free evolution for ``duration`` (s)."""
    return {"op": "wait", "duration": duration, "label": label}


def scanned(
    points: Sequence[ScanPoint], readings: Sequence[Mapping[str, Any]], axis: str
) -> tuple[list[float], list[float]] | None:
    """(x, bright fraction) for points that scanned ``axis``; None if the scan did not."""
    if not points or axis not in points[0].values:
        return None
    return [pt.values[axis] for pt in points], [float(r[BRIGHT_FRACTION]) for r in readings]


def converged(fit: FitResult | None, axis: str) -> dict[str, float] | None:
    """The fit's results if it converged; otherwise none, and the reason in the log."""
    if fit is None:
        logger.warning("no fit of %s: too few points", axis)
        return None
    if not fit.converged:
        logger.warning("the %s fit over %s did not converge: %s", fit.model, axis, fit.message)
        return None
    return fit.flat()


def analyze_resonance(axis: str) -> Analyze:
    def analyze(
        points: Sequence[ScanPoint], readings: Sequence[Mapping[str, Any]], p: Mapping[str, Any]
    ) -> dict[str, float] | None:
        data = scanned(points, readings, axis)
        if data is None:
            return None
        fit = fit_spectroscopy(*data, pulse_time=float(p["qubit.pi_time"]), rabi_frequency=rabi_frequency(p))
        return converged(fit, axis)

    return analyze


def analyze_oscillation(axis: str) -> Analyze:
    def analyze(
        points: Sequence[ScanPoint], readings: Sequence[Mapping[str, Any]], p: Mapping[str, Any]
    ) -> dict[str, float] | None:
        data = scanned(points, readings, axis)
        if data is None:
            return None
        return converged(fit_oscillation(*data), axis)

    return analyze
