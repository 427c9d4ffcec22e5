"""Rabi flopping: the excitation as the drive pulse gets longer."""

from collections.abc import Mapping
from typing import Any

from orchestrion.experiment import Experiment, ScanAxis, experiment_plan
from orchestrion.parameters import ParameterSpec, ParameterType
from orchestrion.sequence import PulseSequence

from ._ion import GLOBAL_PARAMETERS, analyze_oscillation, drive, shot

DURATION = ParameterSpec(
    id="rabi_flop.duration",
    type=ParameterType.FLOAT,
    default=10e-6,
    unit="s",
    minimum=0.0,
    maximum=1e-2,
    group="Rabi flopping",
    description="Length of the drive pulse",
)
DETUNING = ParameterSpec(
    id="rabi_flop.detuning",
    type=ParameterType.FLOAT,
    default=0.0,
    unit="Hz",
    minimum=-5e6,
    maximum=5e6,
    group="Rabi flopping",
    description="Drive frequency minus qubit.frequency",
)


def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
    pulse = drive(p, detuning=p["rabi_flop.detuning"], duration=p["rabi_flop.duration"], label="drive")
    return shot(p, pulse, shots=shots)


EXPERIMENT = Experiment(
    name="rabi_flop",
    description="Excitation vs drive-pulse length: Rabi oscillation",
    parameters=(*GLOBAL_PARAMETERS, DURATION, DETUNING),
    build_sequence=build,
    default_scans=(ScanAxis.linear(DURATION.id, 0.0, 50e-6, 51),),
    analyze=analyze_oscillation(DURATION.id),
)


rabi_flop = experiment_plan(
    EXPERIMENT,
    """Scan the length of a resonant drive pulse: the qubit flops between dark and bright.""",
    __name__,
)
