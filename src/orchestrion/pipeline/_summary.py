"""Run summaries: what the user is told when a run ends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from event_model import DocumentRouter
from event_model.documents import Event, EventDescriptor, EventPage, RunStart, RunStop

from orchestrion.schema import ANALYSIS, PRIMARY, fit_name


@dataclass
class RunSummary:
    """A run as its user is told: ``status`` and ``points`` are, once post-processing has
    reported (``outcome``), what is durable in the run's file and catalog entry.

    ``status`` is "incomplete" when the run succeeded but not everything it produced was
    written (``reason`` says what, ``hdf5`` and ``tiled`` where the data are);
    ``measured_points`` counts the points the RunEngine measured.
    """

    run_uid: str
    experiment: str
    status: str = "running"
    points: int = 0
    measured_points: int = 0
    expected_points: int = 0
    reason: str = ""
    started: float = 0.0
    finished: float | None = None
    hdf5: str | None = None
    tiled: str | None = None
    analysis: dict[str, float] = field(default_factory=dict)
    parameters_written: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    exit_status: str | None = None
    has_analysis: bool = False  # the run has an analysis stream

    def no_fit_reason(self) -> str:
        """Why the run has no fit result, as far as its documents tell."""
        if self.measured_points == 0:
            return "the run measured no point"
        if not self.has_analysis:
            return "the experiment fits nothing for this scan, or its fit found no result (the log above says why)"
        return "the fit reported no number"

    def take_outcome(self, outcome: Mapping[str, Any]) -> None:
        """What post-processing read back of the run: the status and points reported."""
        self.outcome = dict(outcome)
        self.points = int(outcome.get("points") or 0)
        self.hdf5 = outcome.get("hdf5")
        self.tiled = outcome.get("tiled")
        self.problems = [str(p) for p in outcome.get("problems") or []]
        self.settle()

    def settle(self) -> None:
        """The status from the run's exit status and post-processing's outcome, once both are known."""
        if self.outcome is None or self.exit_status is None:
            return
        incomplete = self.outcome.get("status") == "incomplete"
        # A run that failed or was aborted keeps saying so; a successful one whose data
        # were not all written is "incomplete".
        self.status = "incomplete" if incomplete and self.exit_status == "success" else self.exit_status
        if incomplete:
            where = f"; data in {self.hdf5}" if self.hdf5 else "; no file holds its data"
            self.reason = "; ".join(filter(None, [self.reason, *self.problems])) + where

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_uid": self.run_uid,
            "experiment": self.experiment,
            "status": self.status,
            "points": self.points,
            "measured_points": self.measured_points,
            "problems": self.problems,
            "expected_points": self.expected_points,
            "reason": self.reason,
            "started": self.started,
            "finished": self.finished,
            "duration": None if self.finished is None else self.finished - self.started,
            "hdf5": self.hdf5,
            "tiled": self.tiled,
            "analysis": self.analysis,
            "parameters_written": self.parameters_written,
        }


class RunSummaryCollector(DocumentRouter):
    """Counts points and records how each run ended."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, RunSummary] = {}
        self._primary: set[str] = set()
        self._analysis: set[str] = set()
        self._descriptor_run: dict[str, str] = {}

    def start(self, doc: RunStart) -> RunStart | None:
        self.runs[doc["uid"]] = RunSummary(
            run_uid=doc["uid"],
            experiment=str(doc.get("experiment", doc.get("plan_name", ""))),
            expected_points=num_points if isinstance(num_points := doc.get("num_points"), int) else 0,
            started=doc["time"],
        )
        return doc

    def descriptor(self, doc: EventDescriptor) -> EventDescriptor | None:
        self._descriptor_run[doc["uid"]] = doc["run_start"]
        if doc.get("name") == PRIMARY:
            self._primary.add(doc["uid"])
        elif doc.get("name") == ANALYSIS:
            self._analysis.add(doc["uid"])
            self.runs[doc["run_start"]].has_analysis = True
        return doc

    def event(self, doc: Event) -> Event:
        if doc["descriptor"] in self._primary:
            summary = self.runs[self._descriptor_run[doc["descriptor"]]]
            summary.measured_points += 1
            if summary.outcome is None:
                summary.points = summary.measured_points
        elif doc["descriptor"] in self._analysis:
            # Fit results: data keys are 'fit-<name>'; numbers only.
            self.runs[self._descriptor_run[doc["descriptor"]]].analysis.update(
                {
                    fit_name(key): float(value)
                    for key, value in doc["data"].items()
                    if isinstance(value, int | float) and not isinstance(value, bool)
                }
            )
        return doc

    def event_page(self, doc: EventPage) -> EventPage:
        if doc["descriptor"] in self._primary:
            summary = self.runs[self._descriptor_run[doc["descriptor"]]]
            summary.measured_points += len(doc["seq_num"])
            if summary.outcome is None:
                summary.points = summary.measured_points
        return doc

    def stop(self, doc: RunStop) -> RunStop | None:
        summary = self.runs[doc["run_start"]]
        summary.status = summary.exit_status = doc["exit_status"]
        summary.reason = doc.get("reason", "") or ""
        summary.finished = doc["time"]
        summary.settle()  # the outcome may have come first
        return doc
