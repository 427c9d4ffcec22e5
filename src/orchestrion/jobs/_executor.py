"""The executor: one queue-server item that runs Orchestrion's queued jobs back to back (ADR 0310).

bluesky-queueserver 0.0.25's manager notices that its worker finished an item only at
its next 0.5 s poll, so one item per job puts at least that much idle hardware between
jobs.  The executor is a plan of the worker's namespace: it claims the next job from the
job table (highest priority, then first submitted), runs that job's experiment plan (its
own run, its own start document), and claims the next, until nothing waits or the next
thing to run is a plain queue-server item, which then runs as itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from bluesky.utils import MsgGenerator, PlanHalt, RequestAbort, RequestStop

from orchestrion.schema import EXECUTOR_PLAN, JOB_ID_KEY, PARAMETERS_AT

from ._store import Job, JobStatus, JobStore

logger = logging.getLogger(__name__)

Plan = Callable[..., MsgGenerator[Any]]


def make_executor(
    open_store: Callable[[], JobStore], plans: Mapping[str, Plan], own_item_uid: Callable[[], str]
) -> Plan:
    """The executor plan for the worker's namespace.

    ``open_store()`` opens the job table at the executor's first run (introspecting the
    plan opens nothing); ``plans`` are the library's plans by name; ``own_item_uid()`` asks the queue server
    which item is running (the executor's own uid, under which its jobs' attempts are
    recorded; a copy the queue server pushed back has a uid of its own).
    """

    stores: list[JobStore] = []

    def orchestrion_executor() -> MsgGenerator[None]:
        """Run Orchestrion's queued jobs back to back, each its own run, in the job table's order.

        Orchestrion's scheduler queues this item whenever its jobs wait; it returns when no
        job waits, or when a plain queue item should run before the next job.
        """
        if not stores:
            stores.append(open_store())
        store = stores[0]
        item_uid = own_item_uid()
        store.executor_started(item_uid)
        while (job := store.claim_next(item_uid)) is not None:
            logger.info("executor %s: job %d (%s)", item_uid[:8], job.id, job.experiment)
            yield from run_job(store, plans, job, item_uid)

    orchestrion_executor.__name__ = orchestrion_executor.__qualname__ = EXECUTOR_PLAN
    return orchestrion_executor


def job_arguments(job: Job) -> dict[str, Any]:
    """The keyword arguments of one job's plan, with the metadata a job's run carries.

    The worker's preparation of the next job (ADR 0313) makes its request of the same.
    """
    kwargs = dict(job.arguments)
    md = dict(kwargs.pop("md", None) or {})
    # The job reads its own experiment's parameters as they were at its submission (ADR 0006).
    md.update({JOB_ID_KEY: job.id, PARAMETERS_AT: datetime.fromtimestamp(job.created, UTC).isoformat()})
    return {**kwargs, "md": md}


def job_plan(plans: Mapping[str, Plan], job: Job) -> MsgGenerator[Any]:
    """The plan of one job, with the metadata a job's run carries."""
    return plans[job.experiment](**job_arguments(job))


def run_job(store: JobStore, plans: Mapping[str, Plan], job: Job, item_uid: str) -> MsgGenerator[None]:
    """One job inside the executor: its plan, then its attempt recorded with how it ended.

    A job that fails is recorded failed and the executor goes on with the next (ADR 0301);
    an abort, halt or stop of the RunEngine ends the executor item itself (the RunEngine
    is tearing down), after recording the job.
    """
    if job.experiment not in plans:
        store.end_attempt(job.id, item_uid, JobStatus.FAILED, exit_status="failed",
                          error=f"the worker has no experiment '{job.experiment}'")  # fmt: skip
        return
    try:
        yield from job_plan(plans, job)
    except RequestAbort:
        store.end_attempt(job.id, item_uid, JobStatus.CANCELLED, exit_status="aborted", error="aborted while running")
        raise
    except PlanHalt:
        store.end_attempt(job.id, item_uid, JobStatus.CANCELLED, exit_status="halted", error="halted while running")
        raise
    except RequestStop:
        store.end_attempt(job.id, item_uid, JobStatus.DONE, exit_status="stopped")
        raise
    except Exception as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        logger.exception("job %d failed", job.id)
        store.end_attempt(job.id, item_uid, JobStatus.FAILED, exit_status="failed", error=message)
    else:
        store.end_attempt(job.id, item_uid, JobStatus.DONE, exit_status="completed")
