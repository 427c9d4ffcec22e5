"""Frequency calibration: find the resonance and write qubit.frequency back."""

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrion.experiment import Experiment, ScanAxis, ScanPoint, experiment_plan
from orchestrion.parameters import ParameterSpec, ParameterType
from orchestrion.sequence import PulseSequence

from ._ion import GLOBAL_PARAMETERS, analyze_resonance, drive, shot

DETUNING = ParameterSpec(
    id="calibrate_frequency.detuning",
    type=ParameterType.FLOAT,
    default=0.0,
    unit="Hz",
    minimum=-1e6,
    maximum=1e6,
    group="Calibration",
    description="Drive frequency minus the current qubit.frequency",
)
MAX_CORRECTION = ParameterSpec(
    id="calibrate_frequency.max_correction",
    type=ParameterType.FLOAT,
    default=100e3,
    unit="Hz",
    minimum=0.0,
    maximum=1e6,
    group="Calibration",
    description="A fitted correction larger than this is not written back",
)

_resonance = analyze_resonance(DETUNING.id)


def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
    return shot(
        p, drive(p, detuning=p["calibrate_frequency.detuning"], duration=p["qubit.pi_time"], label="pi"), shots=shots
    )


def analyze(
    points: Sequence[ScanPoint], readings: Sequence[Mapping[str, Any]], p: Mapping[str, Any]
) -> dict[str, float] | None:
    """The resonance fit, plus the corrected qubit frequency when the fit can be trusted."""
    resonance = _resonance(points, readings, p)
    if resonance is None:
        return None
    fit = dict(resonance)
    detunings = [pt.values[DETUNING.id] for pt in points]
    inside = min(detunings) <= fit["center"] <= max(detunings)
    if (
        inside
        and abs(fit["center"]) <= p[MAX_CORRECTION.id]
        and fit["center_err"] < abs(max(detunings) - min(detunings))
    ):
        fit["qubit_frequency"] = float(p["qubit.frequency"]) + fit["center"]
        fit["qubit_frequency_err"] = fit["center_err"]  # the stored value is taken as exact
    return fit


EXPERIMENT = Experiment(
    name="calibrate_frequency",
    description="Spectroscopy fit that writes the resonance back to qubit.frequency",
    parameters=(*GLOBAL_PARAMETERS, DETUNING, MAX_CORRECTION),
    build_sequence=build,
    default_scans=(ScanAxis.linear(DETUNING.id, -100e3, 100e3, 41),),
    analyze=analyze,
    calibrates={"qubit_frequency": "qubit.frequency"},
)


calibrate_frequency = experiment_plan(
    EXPERIMENT,
    """Measure the qubit resonance and store the fitted centre as qubit.frequency.

The correction is written only when the fit converged, its centre lies inside the
scan and within calibrate_frequency.max_correction of the stored value.""",
    __name__,
)
