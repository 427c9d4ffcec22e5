"""What an experiment in the library declares."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrion.parameters import ParameterSpec, ParameterValue
from orchestrion.sequence import PulseSequence

from ._scan import ScanAxis, ScanPattern, ScanPoint

BuildSequence = Callable[[Mapping[str, Any], int], PulseSequence]
"""Compile one data point: (parameter values by id, shots) -> the point's sequence."""

Analyze = Callable[[Sequence[ScanPoint], Sequence[Mapping[str, Any]], Mapping[str, Any]], Mapping[str, float] | None]
"""Fit a finished scan: (points, their readings, parameter values) -> named results, or None."""


@dataclass(frozen=True)
class Experiment:
    """An experiment of the library: its parameters, its default scan and its compiler.

    ``build_sequence`` must be a pure function of its arguments: pre-processing runs it
    in worker threads, ahead of the hardware.
    """

    name: str
    description: str
    parameters: tuple[ParameterSpec, ...]
    build_sequence: BuildSequence
    default_scans: tuple[ScanAxis, ...] = ()
    default_shots: int = 100
    sequencer: str = "sequencer"
    analyze: Analyze | None = None
    calibrates: Mapping[str, str] = field(default_factory=dict)
    """Analysis result names whose values are written back to parameters: {result: parameter id}."""

    def __post_init__(self) -> None:
        ids = [p.id for p in self.parameters]
        if len(set(ids)) != len(ids):
            raise ValueError(f"experiment '{self.name}' declares a parameter twice")

    @property
    def parameter_ids(self) -> list[str]:
        return [p.id for p in self.parameters]

    def describe(self) -> dict[str, Any]:
        """The experiment as the CLI's and the API's listings show it (JSON-ready)."""
        return {
            "name": self.name,
            "description": self.description,
            "default_shots": self.default_shots,
            "default_scans": [{"id": a.id, "values": list(a.values)} for a in self.default_scans],
            "scan_patterns": [p.value for p in ScanPattern],
            "calibrates": dict(self.calibrates),
            "parameters": [spec.model_dump(mode="json") for spec in self.parameters],
        }

    def spec(self, parameter_id: str) -> ParameterSpec | None:
        return next((p for p in self.parameters if p.id == parameter_id), None)


@dataclass
class ExperimentResult:
    """What a finished run of an experiment returns to the calling plan.

    Defined here, beside the declaration, so that a plan's signature names it without
    importing the runner (bluesky, ophyd-async): the queue-server worker evaluates it.
    """

    run_uid: str
    points: list[ScanPoint]
    readings: list[dict[str, Any]]
    analysis: dict[str, float]
    parameters_written: dict[str, ParameterValue]
