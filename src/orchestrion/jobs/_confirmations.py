"""Confirming `writing` jobs from the document bus (services mode).

In services mode the post-processing workers record each run's outcome in its state
hash on the bus.  The worker process's `JobRecorder` confirms a job from it at the
run's stop; two cases it cannot see through are confirmed here, by the stack's
scheduler, from the same record:

- a run whose file is written but whose catalog entry waits for Tiled
  (``catalog-pending``): the workers complete the entry once Tiled answers, and the job
  stays `writing` until then, rather than `incomplete` at once;
- a job whose worker process died after its run stopped: the bus workers still write
  the run completely, and the job ends as they wrote it, rather than `incomplete` for
  want of a recorder.

A run the bus has no record of (it never reached it) ends its job `incomplete` once
the job has waited `NO_RECORD_PATIENCE` seconds.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrion.bus import DONE, FAILED, INCOMPLETE, BusKeys, connect, outcome_of, read_state
from orchestrion.config import OrchestrionConfig

from ._store import NOT_ALL_WRITTEN, WRITTEN, Job, JobStatus, JobStore

logger = logging.getLogger(__name__)

NO_RECORD_PATIENCE = 120.0
"""Seconds after a job's plan ended before a run with no state on the bus counts as lost
(the workers record a run's state when they take it, within a claim interval)."""


class BusConfirmations:
    """Ends `writing` jobs as the bus workers' records of their runs say."""

    def __init__(self, config: OrchestrionConfig, store: JobStore, *, keys: BusKeys | None = None) -> None:
        self.store = store
        self.keys = keys or BusKeys()
        self.client = connect(config)

    def close(self) -> None:
        self.client.close()

    def check(self) -> None:
        """One look at every `writing` job whose plan has ended."""
        for job in self.store.list(JobStatus.WRITING, limit=100):
            if job.finished is not None:
                self._check_job(job)

    def _check_job(self, job: Job) -> None:
        run_uids = job.attempts[-1].run_uids if job.attempts else job.run_uids
        for run in self.store.runs(run_uids):
            if run.written is not None:
                continue
            state = read_state(self.client, self.keys.state(run.run_uid))
            status = state.get("status", "")
            if status == DONE:
                outcome = outcome_of(run.run_uid, state)
                self._confirm(run.run_uid, WRITTEN, outcome, None)
            elif status in (FAILED, INCOMPLETE):
                outcome = outcome_of(run.run_uid, state)
                problems = "; ".join(str(p) for p in outcome.get("problems") or []) or status
                where = f"; data in {outcome['hdf5']}" if outcome.get("hdf5") else ""
                self._confirm(run.run_uid, NOT_ALL_WRITTEN, outcome, problems + where)
            elif not state and time.time() - float(job.finished or 0) > NO_RECORD_PATIENCE:
                reason = "post-processing has no record of the run: it did not reach the document bus"
                self._confirm(run.run_uid, NOT_ALL_WRITTEN, {"points": run.points or 0, "hdf5": run.hdf5}, reason)

    def _confirm(self, run_uid: str, written: str, outcome: dict[str, Any], reason: str | None) -> None:
        logger.info("run %s: %s, as post-processing recorded it on the bus", run_uid, written)
        self.store.confirm_run(
            run_uid, written=written, points=int(outcome.get("points") or 0), hdf5=outcome.get("hdf5"),
            tiled=outcome.get("tiled") if written == WRITTEN else None, reason=reason,
        )  # fmt: skip
