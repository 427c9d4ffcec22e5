"""One lab session: a RunEngine, the lab and the document pipeline of one process.

`LabSession` is the one set-up (and teardown) of every process that hosts the
RunEngine: `orchestrion run` (`EmbeddedSession`), the IPython session
(`orchestrion.shell`) and the queue-server worker (`orchestrion.worker`).  Strict by
default: anything that cannot be built or opened raises.  Lenient (the shell): each
part that fails is recorded as a `Problem` and the session starts with what works.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig
from orchestrion.devices import DeviceRegistry, DeviceState, connect_devices
from orchestrion.errors import DeviceConnectionError
from orchestrion.experiment import ExperimentLibrary, ExperimentResult, PreparedRun, RunRequest, prepare_run
from orchestrion.lab import Lab, activate, build_lab_devices, load_library_and_devices, open_lab
from orchestrion.parameters import ParameterStore, open_parameter_store
from orchestrion.pipeline import DocumentPipeline, RunSummary, build_pipeline

logger = logging.getLogger(__name__)

DocumentCallback = Callable[[str, dict[str, Any]], Any]
T = TypeVar("T")


@dataclass
class Problem:
    """Something a lenient session could not set up, and why."""

    part: str
    message: str


def stop_event_loop(RE: RunEngine, timeout: float = 10.0) -> None:
    """Stop the event loop (and so the thread) that ``RE`` created; the RunEngine is done.

    A RunEngine starts a thread running its own asyncio loop and never stops it: a
    process that makes many (a test suite) keeps one thread each.  Only for RunEngines
    whose devices are gone too: Channel Access clients (aioca) call back into the loop
    of the devices they connected for as long as the process lives, so a `LabSession`
    leaves its loop running.
    """
    loop = RE.loop
    if loop.is_closed():
        return
    if RE.state != "idle":
        RE.halt()
    loop.call_soon_threadsafe(loop.stop)
    deadline = time.monotonic() + timeout
    while loop.is_running():
        if time.monotonic() > deadline:
            logger.warning("the RunEngine's event loop did not stop within %.0f s", timeout)
            return
        time.sleep(0.005)  # the loop stops within one iteration of its own
    loop.close()


class LabSession:
    """The RunEngine, lab and document pipeline of this process, opened and closed as one.

    Use as a context manager, or call `open` and `close`.  Building the library and the
    devices (at construction) writes nothing and moves nothing, so a caller can refuse
    a bad request before `open` touches stores, files or hardware.
    """

    def __init__(
        self, config: OrchestrionConfig, *, run_engine: RunEngine | None = None, lenient: bool = False
    ) -> None:
        self.config = config
        self.lenient = lenient
        self.problems: list[Problem] = []
        self.RE = run_engine if run_engine is not None else RunEngine({}, call_returns_result=True)
        self.library: ExperimentLibrary | None = None
        self.devices: DeviceRegistry | None = None
        self.parameters: ParameterStore | None = None
        self.lab: Lab | None = None
        self.pipeline: DocumentPipeline | None = None
        self._tokens: list[int] = []
        self._opened = False
        if lenient:
            self.library = self.attempt("experiment library", lambda: ExperimentLibrary.load(config.plans_dir))
            self.devices = self.attempt("devices", lambda: build_lab_devices(config, strict=False))
        else:
            self.library, self.devices = load_library_and_devices(config)

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> Self:
        """Open the stores, connect the devices, activate the lab, subscribe the pipeline.

        Idempotent.  Connecting runs in the RunEngine's loop, which exists by now.
        """
        if self._opened:
            return self
        self._opened = True
        if not self.lenient:
            assert self.library is not None
            assert self.devices is not None
            self.lab = open_lab(self.config, library=self.library, devices=self.devices)
            self.parameters = self.lab.parameters
        else:
            self._open_leniently()
        if self.lab is not None:
            activate(self.lab)
        pipeline = self.attempt("document pipeline", lambda: build_pipeline(self.config))
        if pipeline is not None:
            self.pipeline = pipeline
            pipeline.subscribe(self.RE)
        return self

    def _open_leniently(self) -> None:
        if self.devices is not None:
            try:
                connect_devices(self.devices, strict=self.config.devices_strict)
            except DeviceConnectionError as exc:  # strict: no lab without all its devices
                self.problems.append(Problem("devices", str(exc)))
                self.devices = None
            else:
                for device in self.devices:
                    if device.state is not DeviceState.CONNECTED:
                        self.problems.append(Problem(f"device {device.name}", device.reason))
        store = self.attempt("parameters", lambda: open_parameter_store(self.config))
        if store is not None and self.library is not None:
            opened, library = store, self.library
            if self.attempt("parameters", lambda: opened.declare(library.parameter_specs()) or True) is None:
                store.close()
                store = None
        self.parameters = store
        if store is not None and self.library is not None and self.devices is not None:
            self.lab = Lab(config=self.config, library=self.library, devices=self.devices, parameters=store)

    def attempt(self, part: str, action: Callable[[], T]) -> T | None:
        """``action()``; in a lenient session a failure is recorded as a problem instead."""
        if not self.lenient:
            return action()
        try:
            return action()
        except Exception as exc:
            logger.debug("session start-up: %s failed", part, exc_info=True)
            self.problems.append(Problem(part, str(exc) or type(exc).__name__))
            return None

    def subscribe(self, callback: DocumentCallback) -> int:
        """Subscribe ``callback`` to the RunEngine after the pipeline; unsubscribed at `close`."""
        token = int(self.RE.subscribe(callback))
        self._tokens.append(token)
        return token

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        for token in self._tokens:
            self.RE.unsubscribe(token)
        self._tokens.clear()
        if self.pipeline is not None:
            self.pipeline.unsubscribe(self.RE)
            self.pipeline.close()
            self.pipeline = None
        if self.lab is not None:
            activate(None)
        if self.parameters is not None:
            self.parameters.close()
            self.parameters = None
        self.lab = None
        self._opened = False

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EmbeddedSession(LabSession):
    """Runs experiments in this process against the lab the configuration describes (strict)."""

    library: ExperimentLibrary
    devices: DeviceRegistry

    def __init__(self, config: OrchestrionConfig, *, run_engine: RunEngine | None = None) -> None:
        super().__init__(config, run_engine=run_engine)

    def lab_parameters(self) -> ParameterStore:
        """The open lab's parameter store (call `open` first)."""
        if self.parameters is None:
            raise RuntimeError("the session is not open")
        return self.parameters

    def validate(self, request: RunRequest) -> PreparedRun:
        """Check a request completely; raises `InputError`; writes nothing."""
        return prepare_run(self.library.experiment(request.experiment), self.devices, request)

    def run(self, request: RunRequest, *, extra_callbacks: Sequence[DocumentCallback] = ()) -> RunSummary:
        """Run one experiment to its end; returns the run's summary."""
        self.validate(request)
        self.open()
        # Again, now that the devices have connected: one that did not is refused here.
        self.validate(request)
        assert self.pipeline is not None
        plan = self.library.entry(request.experiment).plan(**request.plan_kwargs())
        tokens = [self.RE.subscribe(cb) for cb in extra_callbacks]
        try:
            outcome = self.RE(plan)
        finally:
            for token in tokens:
                self.RE.unsubscribe(token)
        uids = list(getattr(outcome, "run_start_uids", ()) or ())
        if not uids:
            raise RuntimeError(f"{request.experiment}: the plan opened no run")
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
