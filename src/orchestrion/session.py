"""An embedded session: a RunEngine, the lab and the document pipeline in one process."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig
from orchestrion.experiment import ExperimentResult, RunRequest, prepare_run
from orchestrion.lab import Lab, activate, load_library_and_devices, open_lab
from orchestrion.pipeline import DocumentPipeline, RunSummary, build_pipeline

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What a user asks of one run; validated by `EmbeddedSession.validate`."""

    experiment: str
    scans: Sequence[str] | None = None
    overrides: dict[str, Any] | None = None
    shots: int | None = None
    repetitions: int = 1
    pattern: str = "linear"
    md: dict[str, Any] | None = None


class EmbeddedSession:
    """Runs experiments in this process against the lab the configuration describes."""

    def __init__(self, config: OrchestrionConfig, *, run_engine: RunEngine | None = None) -> None:
        self.config = config
        # Build what can be checked without writing or moving anything first, so that a
        # bad request can be refused before the session opens stores or files.
        self.library, self.devices = load_library_and_devices(config)
        self.RE = run_engine or RunEngine({}, call_returns_result=True)
        self.pipeline: DocumentPipeline | None = None
        self.lab: Lab | None = None

    def validate(self, options: RunOptions) -> RunRequest:
        """Check a request completely; raises `InputError`; writes nothing."""
        experiment = self.library.experiment(options.experiment)
        return prepare_run(
            experiment,
            self.devices,
            scans=options.scans,
            overrides=options.overrides,
            shots=options.shots,
            repetitions=options.repetitions,
            pattern=options.pattern,
        )

    def open(self) -> Lab:
        """Open stores, connect devices, subscribe the pipeline; idempotent."""
        if self.lab is None:
            self.lab = open_lab(self.config, library=self.library, devices=self.devices)
            activate(self.lab)
            self.pipeline = build_pipeline(self.config)
            self.pipeline.subscribe(self.RE)
        return self.lab

    def run(
        self, options: RunOptions, *, extra_callbacks: Sequence[Callable[[str, dict[str, Any]], Any]] = ()
    ) -> RunSummary:
        """Run one experiment to its end; returns the run's summary."""
        self.validate(options)
        self.open()
        # Again, now that the devices have connected: one that did not is refused here.
        self.validate(options)
        assert self.pipeline is not None
        plan = self.library.entry(options.experiment).plan(
            scan=list(options.scans) if options.scans is not None else None,
            parameters=options.overrides,
            shots=options.shots,
            repetitions=options.repetitions,
            pattern=options.pattern,
            md=options.md,
        )
        tokens = [self.RE.subscribe(cb) for cb in extra_callbacks]
        try:
            outcome = self.RE(plan)
        finally:
            for token in tokens:
                self.RE.unsubscribe(token)
        uids = list(getattr(outcome, "run_start_uids", ()) or ())
        if not uids:
            raise RuntimeError(f"{options.experiment}: the plan opened no run")
        summary = self.pipeline.summaries.runs[uids[-1]]
        # The catalog finishes a run after its stop: what this reports must be there.
        if not self.pipeline.wait_catalogued(uids[-1]):
            summary.tiled = None
        result = getattr(outcome, "plan_result", None)
        if isinstance(result, ExperimentResult):
            summary.parameters_written = {
                pid: {"value": v.value, "timestamp": v.timestamp.isoformat()}
                for pid, v in result.parameters_written.items()
            }
        return summary

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.unsubscribe(self.RE)
            self.pipeline.close()
        if self.lab is not None:
            activate(None)
            self.lab.close()
            self.lab = None
