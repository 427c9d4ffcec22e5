"""Spectroscopy: a pi pulse scanned in frequency across the qubit resonance."""

from collections.abc import Mapping
from typing import Any

from orchestrion.experiment import Experiment, ScanAxis, experiment_plan
from orchestrion.parameters import ParameterSpec, ParameterType
from orchestrion.sequence import PulseSequence

from ._ion import GLOBAL_PARAMETERS, analyze_resonance, drive, shot

DETUNING = ParameterSpec(
    id="spectroscopy.detuning",
    type=ParameterType.FLOAT,
    default=0.0,
    unit="Hz",
    minimum=-5e6,
    maximum=5e6,
    group="Spectroscopy",
    description="Drive frequency minus qubit.frequency",
)


def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
    return shot(p, drive(p, detuning=p["spectroscopy.detuning"], duration=p["qubit.pi_time"], label="pi"), shots=shots)


EXPERIMENT = Experiment(
    name="spectroscopy",
    description="Frequency scan of a pi pulse across the qubit resonance",
    parameters=(*GLOBAL_PARAMETERS, DETUNING),
    build_sequence=build,
    default_scans=(ScanAxis.linear(DETUNING.id, -150e3, 150e3, 31),),
    analyze=analyze_resonance(DETUNING.id),
)


spectroscopy = experiment_plan(
    EXPERIMENT,
    """Scan the drive frequency across the qubit resonance with a pi pulse.""",
    __name__,
)
