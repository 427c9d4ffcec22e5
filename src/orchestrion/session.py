"""One lab session: a RunEngine, the lab and the document pipeline of one process.

`LabSession` is the one set-up (and teardown) of every process that hosts the
RunEngine: `orchestrion run` (`EmbeddedSession`), the IPython session
(`orchestrion.shell`) and the queue-server worker (`orchestrion.worker`).  Strict by
default: anything that cannot be built or opened raises.  Lenient (the shell): each
part that fails is recorded as a `Problem` and the session starts with what works.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted

from orchestrion.config import OrchestrionConfig
from orchestrion.devices import DeviceRegistry, DeviceState, connect_devices
from orchestrion.errors import DeviceConnectionError, OrchestrionError
from orchestrion.experiment import (
    ExperimentLibrary,
    ExperimentResult,
    PreparedRun,
    RunLimits,
    RunRequest,
    prepare_run,
)
from orchestrion.lab import Lab, activate, build_lab_devices, load_library_and_devices, open_lab
from orchestrion.parameters import ParameterStore, open_parameter_store
from orchestrion.pipeline import DocumentPipeline, RunSummary, build_pipeline

logger = logging.getLogger(__name__)

DocumentCallback = Callable[[str, dict[str, Any]], Any]
T = TypeVar("T")


@contextlib.contextmanager
def _helpers_ignore_ctrl_c() -> Iterator[None]:
    """Processes started inside ignore SIGINT from their first instruction.

    Ctrl-C in a terminal reaches the whole process group.  The post-processing helper
    ignores it once it has imported its modules, which takes seconds; a Ctrl-C before
    that killed it with the run's data.  An ignored signal stays ignored across exec,
    and Python then installs no KeyboardInterrupt handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class ScanIdCounter:
    """The scan ids of one home, 1, 2, 3, ..., unique across its processes and restarts.

    A RunEngine's ``scan_id_source``: each run takes the next number under an exclusive
    lock (``HOME/scan_id.lock``), so `orchestrion run`, the shell and the queue-server
    worker never hand out the same id.  The last id taken is kept in ``HOME/scan_id``,
    replaced as a whole (written beside, synced, renamed), so a process killed mid-write
    leaves the previous number, never a torn one.  A larger ``RE.md['scan_id']`` (the
    bluesky way to jump ahead) is honoured; ids never go back.
    """

    def __init__(self, home: Path) -> None:
        self.path = home / "scan_id"

    def __call__(self, md: Mapping[str, Any]) -> int:
        asked = md.get("scan_id", 0)
        return self.take(asked if isinstance(asked, int) and not isinstance(asked, bool) else 0)

    def take(self, at_least: int = 0) -> int:
        """The next scan id of the home (above ``at_least``), recorded before it is returned."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            scan_id = max(self.last(), at_least) + 1
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            with open(temporary, "w") as out:
                out.write(f"{scan_id}\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return scan_id

    def last(self) -> int:
        """The last scan id taken in this home (0: none yet)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError:
            raise OrchestrionError(
                f"{self.path}: {text.strip()[:40]!r} is not a scan id; put the highest scan id of this home in it"
            ) from None


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
        self,
        config: OrchestrionConfig,
        *,
        run_engine: RunEngine | None = None,
        lenient: bool = False,
        pipeline_factory: Callable[[OrchestrionConfig], DocumentPipeline] = build_pipeline,
        early_pipeline: bool = False,
    ) -> None:
        self.config = config
        self.lenient = lenient
        # ``early_pipeline``: the post-processing process starts now, held (it imports,
        # and writes nothing until `open`), so its seconds of imports overlap the
        # library's, the devices' and the lab's set-up (ADR 0810).
        self._early: DocumentPipeline | None = None
        if early_pipeline and pipeline_factory is build_pipeline:
            with _helpers_ignore_ctrl_c():
                self._early = build_pipeline(config, hold=True)
        # Where the documents go: this process's post-processing (embedded), or the
        # document bus (services mode, `orchestrion.bus.build_bus_pipeline`).
        self._pipeline_factory = pipeline_factory
        self.problems: list[Problem] = []
        # After the helper has started: the RunEngine's constructor imports ophyd 1.x (a
        # second), which the helper's imports overlap.
        self.RE = run_engine if run_engine is not None else self._new_run_engine()
        self.RE.scan_id_source = ScanIdCounter(config.home)
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

    def _new_run_engine(self) -> RunEngine:
        return RunEngine({}, call_returns_result=True)

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
        pipeline: DocumentPipeline | None = self._early
        if pipeline is not None:
            self._early = None
            pipeline.release()
        else:
            with _helpers_ignore_ctrl_c():
                pipeline = self.attempt("document pipeline", lambda: self._pipeline_factory(self.config))
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
        if self._early is not None:  # never opened: the held helper had nothing to do
            self._early.close()
            self._early = None
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


class _AbortAnnounced(logging.Filter):
    """Drops what bluesky logs about an abort that this session asked for and reports itself."""

    EXPECTED = frozenset({"Run aborted", "No open traces left to close!"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.EXPECTED


class RunInterrupted(OrchestrionError):
    """A run stopped by a signal: aborted, its stop document emitted and its file closed."""

    def __init__(self, signum: signal.Signals, summary: RunSummary | None) -> None:
        self.signal = signum
        self.summary = summary
        if summary is None:
            what = "no run had started"
        else:
            what = (
                f"{summary.experiment} run {summary.run_uid[:8]} closed as '{summary.status}' after "
                f"{summary.points} of {summary.expected_points} points"
            )
            if summary.hdf5:
                what += f", data in {summary.hdf5}"
        super().__init__(f"interrupted by {signum.name}: {what}")

    @property
    def exit_code(self) -> int:
        """The shell's code for a death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signal)


class EmbeddedSession(LabSession):
    """Runs experiments in this process against the lab the configuration describes (strict).

    Nobody sits at its RunEngine to resume a pause, so SIGINT (Ctrl-C) and SIGTERM abort
    the run instead of pausing it: the plan cleans up, the stop document says 'abort'
    with the signal as the reason, the file is closed, and `run` raises `RunInterrupted`.
    """

    library: ExperimentLibrary
    devices: DeviceRegistry

    def __init__(
        self, config: OrchestrionConfig, *, run_engine: RunEngine | None = None, early_pipeline: bool = False
    ) -> None:
        self._signalled: signal.Signals | None = None
        super().__init__(config, run_engine=run_engine, early_pipeline=early_pipeline)

    def _new_run_engine(self) -> RunEngine:
        return RunEngine({}, call_returns_result=True, context_managers=[self._abort_on_signals])

    def lab_parameters(self) -> ParameterStore:
        """The open lab's parameter store (call `open` first)."""
        if self.parameters is None:
            raise RuntimeError("the session is not open")
        return self.parameters

    def validate(self, request: RunRequest) -> PreparedRun:
        """Check a request completely; raises `InputError`; writes nothing."""
        experiment = self.library.experiment(request.experiment)
        return prepare_run(experiment, self.devices, request, limits=RunLimits.of(self.config))

    def run(self, request: RunRequest, *, extra_callbacks: Sequence[DocumentCallback] = ()) -> RunSummary:
        """Run one experiment to its end; returns the run's summary.

        Raises `RunInterrupted` if a signal stopped it (the run closed as aborted).
        """
        self.validate(request)
        self.open()
        # Again, now that the devices have connected: one that did not is refused here.
        self.validate(request)
        assert self.pipeline is not None
        plan = self.library.entry(request.experiment).plan(**request.plan_kwargs())
        started: list[str] = []
        tokens = [self.RE.subscribe(cb) for cb in extra_callbacks]

        def opened(name: str, doc: dict[str, Any]) -> None:
            started.append(doc["uid"])
            logger.info(
                "%s run %s started: scan %s, %s points",
                doc.get("experiment"), doc["uid"][:8], doc.get("scan_id"), doc.get("num_points"),
            )  # fmt: skip

        tokens.append(self.RE.subscribe(opened, "start"))
        self._signalled = None
        try:
            outcome = self.RE(plan)
        except RunEngineInterrupted:
            raise self._interrupted(started[-1] if started else None) from None
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

    def _interrupted(self, run_uid: str | None) -> RunInterrupted:
        """The run, closed after a signal (or a pause nobody can resume), as an error to raise."""
        assert self.pipeline is not None
        if self.RE.state != "idle":  # paused by the plan itself: nobody here can resume it
            with contextlib.redirect_stdout(io.StringIO()):  # bluesky prints what it does
                self.RE.abort(reason="paused with nobody to resume it")
        summary = self.pipeline.summaries.runs.get(run_uid) if run_uid is not None else None
        if summary is not None and not self.pipeline.wait_catalogued(summary.run_uid):
            summary.tiled = None
        return RunInterrupted(self._signalled or signal.SIGINT, summary)

    @contextlib.contextmanager
    def _abort_on_signals(self, RE: RunEngine) -> Iterator[None]:
        """While the RunEngine runs a plan: SIGINT or SIGTERM aborts it.

        In place of bluesky's `SigintHandler`.  A signal handler may not call into the
        RunEngine (it runs between two bytecodes of the main thread, which waits on the
        plan), so it only wakes a helper thread that aborts the run.
        """
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        asked = threading.Event()
        finished = False

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._signalled is None:
                self._signalled = signal.Signals(signum)
            asked.set()

        def abort_when_asked() -> None:
            asked.wait()
            if finished:
                return
            logger.info("%s received: aborting the run", self._signalled and self._signalled.name)
            bluesky_log.addFilter(quiet)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # bluesky prints what it does
                    RE.abort(reason=f"interrupted by {self._signalled and self._signalled.name}")
            except Exception:  # the run had already ended: nothing left to abort
                logger.debug("abort after %s", self._signalled, exc_info=True)

        bluesky_log, quiet = logging.getLogger("bluesky"), _AbortAnnounced()
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        aborter = threading.Thread(target=abort_when_asked, name="abort-on-signal", daemon=True)
        aborter.start()
        try:
            yield
        finally:
            for sig, restored in previous.items():
                signal.signal(sig, restored)
            finished = True
            asked.set()
            aborter.join()
            bluesky_log.removeFilter(quiet)
