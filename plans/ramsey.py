"""Ramsey: two pi/2 pulses separated by a free-evolution time."""

from collections.abc import Mapping
from typing import Any

from orchestrion.experiment import Experiment, ScanAxis, experiment_plan
from orchestrion.parameters import ParameterSpec, ParameterType
from orchestrion.sequence import PulseSequence

from ._ion import GLOBAL_PARAMETERS, analyze_oscillation, drive, shot, wait

WAIT = ParameterSpec(
    id="ramsey.wait",
    type=ParameterType.FLOAT,
    default=50e-6,
    unit="s",
    minimum=0.0,
    maximum=0.1,
    group="Ramsey",
    description="Free evolution between the two pi/2 pulses",
)
DETUNING = ParameterSpec(
    id="ramsey.detuning",
    type=ParameterType.FLOAT,
    default=20e3,
    unit="Hz",
    minimum=-5e6,
    maximum=5e6,
    group="Ramsey",
    description="Deliberate detuning of both pulses: the fringe frequency",
)
PHASE = ParameterSpec(
    id="ramsey.phase",
    type=ParameterType.FLOAT,
    default=0.0,
    unit="rad",
    minimum=-6.3,
    maximum=6.3,
    group="Ramsey",
    description="Phase of the second pi/2 pulse",
)


def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
    half_pi = p["qubit.pi_time"] / 2.0
    detuning = p["ramsey.detuning"]
    return shot(
        p,
        drive(p, detuning=detuning, duration=half_pi, label="pi/2"),
        wait(p["ramsey.wait"], label="wait"),
        drive(p, detuning=detuning, duration=half_pi, phase=p["ramsey.phase"], label="pi/2 analysis"),
        shots=shots,
    )


EXPERIMENT = Experiment(
    name="ramsey",
    description="Ramsey fringes vs free-evolution time",
    parameters=(*GLOBAL_PARAMETERS, WAIT, DETUNING, PHASE),
    build_sequence=build,
    default_scans=(ScanAxis.linear(WAIT.id, 0.0, 200e-6, 41),),
    analyze=analyze_oscillation(WAIT.id),
)


ramsey = experiment_plan(
    EXPERIMENT,
    """Scan the wait between two pi/2 pulses: fringes at the detuning, decaying with T2*.""",
    __name__,
)
