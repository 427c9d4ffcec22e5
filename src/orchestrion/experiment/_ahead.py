"""The next job's start, prepared while the current job runs (ADR 0313).

Between two jobs of the executor the hardware waits for the next run's start: its
parameter snapshot, its checks (`prepare_run`) and its first sequences.  The worker's
`AheadPreparer` makes them earlier, on one thread of its own, for the job the job table
would give next; the next run takes them by job id if nothing they were made from has
changed since, and otherwise makes them again as it always did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace

from orchestrion.errors import OrchestrionError
from orchestrion.parameters import ParameterValue
from orchestrion.schema import PARAMETERS_AT

from ._context import LabContext
from ._experiment import Experiment
from ._preprocess import short_switch_interval
from ._request import RunRequest
from ._runner import RunStart, device_state, read_parameters, start_run

logger = logging.getLogger(__name__)

NICENESS = 10
"""Added to the preparing thread's niceness: the running job's points come first."""


@dataclass(frozen=True)
class NextRun:
    """The job the job table would start next, as its run would be asked for."""

    job_id: int
    experiment: Experiment
    request: RunRequest


@dataclass(frozen=True)
class _Preparation:
    job_id: int
    request: RunRequest
    result: Future[RunStart | None]


class AheadPreparer:
    """Prepares one job's start at a time, ahead, and hands it to that job's run if it still holds.

    ``next_run()`` says which job the job table would start next (it only looks: the
    job is claimed as before, when the running one ends); it is called on the
    preparing thread when the running run says it is `under_way`.
    """

    def __init__(self, lab: LabContext, next_run: Callable[[], NextRun | None]) -> None:
        self._lab = lab
        self._next_run = next_run
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        self._asked = False
        self._closed = False
        self._preparation: _Preparation | None = None
        self._thread: threading.Thread | None = None

    def prepared(self) -> int | None:
        """The job whose start is prepared (and finished preparing), if any."""
        with self._lock:
            preparation = self._preparation
        return preparation.job_id if preparation is not None and preparation.result.done() else None

    def under_way(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._asked = True
            self._wanted.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="prepare-ahead", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._preparation = None
            self._wanted.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def take(self, job_id: int, experiment: Experiment, run: RunRequest) -> RunStart | None:
        with self._lock:
            preparation, self._preparation = self._preparation, None  # one use, whatever happens
        if preparation is None:
            return None
        if preparation.job_id != job_id or preparation.request != run:
            # Another job was claimed (a priority changed, one of higher priority came,
            # this one was cancelled) or its request is not the one prepared.
            self._discard(preparation.job_id, f"job {job_id} was claimed instead")
            return None
        # Still being prepared: what is left of it is at most what the run would do now.
        start = preparation.result.result()
        if start is None or start.prepared.experiment is not experiment:
            self._discard(job_id, "its preparation failed")
            return None
        reason = self._changed(start, experiment)
        if reason is not None:
            self._discard(job_id, reason)
            return None
        logger.info("job %d: starts as prepared ahead", job_id)
        return replace(start, ahead=True)

    def _changed(self, start: RunStart, experiment: Experiment) -> str | None:
        """Why ``start`` no longer holds, or None: what a start made now would be made from is the same."""
        lab = self._lab
        lab.devices.refresh()  # as the start made now would (`start_run`), on the RunEngine's thread
        if device_state(lab.devices) != start.devices:
            return "the lab's devices changed"
        mark = lab.parameters.change_mark()
        if mark is not None and mark == start.mark:
            return None
        # Something was written (or the store cannot tell): the snapshot holds if reading
        # it again gives the same values, from the same writes.
        fresh = read_parameters(experiment, lab, start.request.md.get(PARAMETERS_AT))
        if _identity(fresh) != _identity(start.snapshot):
            return "parameters it read changed"
        return None

    def _discard(self, job_id: int, reason: str) -> None:
        logger.info("job %d: preparation discarded (%s)", job_id, reason)

    def _serve(self) -> None:
        # Linux gives each thread its own niceness (`setpriority` of its thread id).
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
        while True:
            with self._lock:
                while not self._asked and not self._closed:
                    self._wanted.wait()
                if self._closed:
                    return
                self._asked = False
            try:
                self._prepare_next()
            except Exception:  # never the running job's business: its next run starts as before
                logger.exception("preparing the next job's start failed")

    def _prepare_next(self) -> None:
        upcoming = self._next_run()
        if upcoming is None:
            return
        with self._lock:
            current = self._preparation
            if current is not None and current.job_id == upcoming.job_id and current.request == upcoming.request:
                return  # prepared (or being prepared) already; `take` checks it still holds
            if current is not None:
                self._discard(current.job_id, f"job {upcoming.job_id} comes first")
            preparation = _Preparation(upcoming.job_id, upcoming.request, Future())
            self._preparation = preparation
        preparation.result.set_running_or_notify_cancel()
        try:
            # The RunEngine's thread gets the GIL back soon while this one compiles: the
            # preparation often overlaps with the running job's end (ADR 0811, 0313).
            with short_switch_interval():
                start = start_run(
                    upcoming.experiment,
                    self._lab,
                    upcoming.request,
                    lookahead=self._lab.config.preprocess_lookahead,
                    refresh_devices=False,  # the running run's devices stay as they are
                )
        except OrchestrionError as exc:
            # The run itself will refuse the request, naming the problem, at its start.
            logger.info("job %d: not prepared ahead: %s", upcoming.job_id, exc)
            preparation.result.set_result(None)
        except BaseException:
            preparation.result.set_result(None)
            raise
        else:
            preparation.result.set_result(start)
            logger.info("job %d: prepared ahead", upcoming.job_id)


def _identity(snapshot: Mapping[str, ParameterValue]) -> dict[str, tuple[object, ...]]:
    """What makes two snapshots the same: each value with its type, time and source."""
    return {pid: (type(v.value), v.value, v.timestamp, v.source) for pid, v in snapshot.items()}
