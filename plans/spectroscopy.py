"""Spectroscopy: a pi pulse scanned in frequency across the qubit resonance."""

from collections.abc import Mapping
from typing import Any

from bluesky.utils import MsgGenerator

from orchestrion.experiment import Experiment, ExperimentResult, ScanAxis, run_experiment
from orchestrion.lab import active_lab
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


def spectroscopy(
    scan: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
    shots: int | None = None,
    repetitions: int = 1,
    pattern: str = "linear",
    md: dict[str, Any] | None = None,
) -> MsgGenerator[ExperimentResult]:
    """Scan the drive frequency across the qubit resonance with a pi pulse.

    Parameters
    ----------
    scan
        Scans as "ID=START:STOP:NUM" (or "ID=V1,V2,..."); default
        "spectroscopy.detuning=-150e3:150e3:31" (Hz).  Several scans make a grid.
    parameters
        Values for this run only, by parameter id; the stored values stay.
    shots
        Shots per point (default 100).
    repetitions
        How many times the whole scan is repeated.
    pattern
        "linear", "shuffled" or "centred".
    md
        Metadata added to the run's start document.
    """
    return (
        yield from run_experiment(
            EXPERIMENT,
            active_lab(),
            scans=scan,
            overrides=parameters,
            shots=shots,
            repetitions=repetitions,
            pattern=pattern,
            md=md,
        )
    )
