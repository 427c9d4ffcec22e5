"""Submitting and controlling jobs: validate, write the row, queue the item, in one step."""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, StrictInt

from orchestrion.devices import DeviceRegistry
from orchestrion.errors import InputError, OrchestrionError
from orchestrion.experiment import ExperimentLibrary, RunRequest, prepare_run
from orchestrion.schema import JOB_ID_KEY, PARAMETERS_AT

from ._store import Job, JobStatus, JobStore, NewJob

logger = logging.getLogger(__name__)


class QueueServerError(OrchestrionError):
    """The queue server cannot be reached, or refused a request for a reason not the user's."""


class JobRequest(RunRequest):
    """A `RunRequest` for the queue, with its priority (higher runs sooner)."""

    priority: StrictInt = Field(0, description="Higher runs sooner; ties run in submission order")


def default_submitter() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def validate_request(library: ExperimentLibrary, devices: DeviceRegistry, request: JobRequest) -> dict[str, Any]:
    """Check a request completely (no store opened, nothing moved); the plan's kwargs.

    Parameter values given as text (from a command line) come back typed, so the queue
    server's own type checks see numbers where the plan expects numbers.  The metadata
    is left out: submission adds it with the job's own keys.
    """
    if JOB_ID_KEY in request.md:
        raise InputError(f"metadata key '{JOB_ID_KEY}' is Orchestrion's own")
    checked = prepare_run(library.experiment(request.experiment), devices, request)
    typed: dict[str, Any] = dict(checked.overrides)
    typed.update({pid: value for pid, (_, value) in checked.device_settings.items()})
    return request.model_copy(update={"parameters": typed, "pattern": checked.pattern.value, "md": {}}).plan_kwargs()


def _api_errors() -> tuple[type[BaseException], ...]:
    from bluesky_queueserver_api.comm_base import RequestTimeoutError

    return (RequestTimeoutError, TimeoutError, ConnectionError)


def insert_position(store: JobStore, items: Sequence[Mapping[str, Any]], priority: int) -> str | None:
    """The item uid a job of ``priority`` goes before (None: the back of the queue).

    The queue is kept sorted by priority, highest first; a new job goes behind every
    job of its own priority, so ties run in submission order.  Items that plain
    queue-server clients added count as priority 0.
    """
    jobs = store.by_item_uids([str(i["item_uid"]) for i in items])
    for item in items:
        job = jobs.get(str(item["item_uid"]))
        if (job.priority if job is not None else 0) < priority:
            return str(item["item_uid"])
    return None


def placement_from_table(store: JobStore, priority: int) -> dict[str, str] | None:
    """Where a job of ``priority`` goes when the job table alone can tell; None: read the queue.

    Every job submitted here is in the table, with its priority, from the moment its
    item is in the queue (the row commits with it); items that plain queue-server
    clients added count as priority 0 and the table may not know them yet.  So a job of
    priority 0 or less goes to the back when no waiting job has a lower priority than
    its own, and a job of higher priority to the front when no waiting job has one as
    high: the places `insert_position` would find in the queue itself, without asking
    the queue server for it (a round trip as long as adding the item).
    """
    waiting = store.waiting_priorities()
    if priority <= 0 and (waiting is None or waiting[0] >= priority):
        return {"pos": "back"}
    if priority > 0 and (waiting is None or waiting[1] < priority):
        return {"pos": "front"}
    return None


def submit_job(
    store: JobStore,
    api: Any,
    request: JobRequest,
    kwargs: Mapping[str, Any],
    *,
    submitter: str,
    user_group: str,
    code: tuple[str | None, bool | None] = (None, None),
    attempts: int = 3,
    parent: int | None = None,
) -> Job:
    """Write the job row and add its item to the queue server's queue, or do neither.

    ``kwargs`` are the validated plan arguments (`validate_request`).  The queue server
    checks the user group's permissions and the arguments against the plan's signature;
    if it refuses, the row is rolled back and `InputError` names its reason.
    """
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.comm_base import RequestFailedError

    for attempt in range(1, attempts + 1):
        try:
            with store.write():
                # Before this job's own row exists: it would count as a waiting job.
                place = placement_from_table(store, request.priority)
                job_id = store.insert(
                    NewJob(
                        experiment=request.experiment, arguments=dict(kwargs), priority=request.priority,
                        submitter=submitter, user_group=user_group, scan=request.scan,
                        repetitions=request.repetitions, shots=request.shots, pattern=request.pattern,
                        code_commit=code[0], code_clean=code[1], parent=parent,
                    )
                )  # fmt: skip
                # The job reads its own experiment's parameters as they are now (ICON's rule).
                md = {**dict(request.md), JOB_ID_KEY: job_id, PARAMETERS_AT: datetime.now(UTC).isoformat()}
                item = BPlan(request.experiment, **kwargs, md=md)
                before = None
                try:
                    if place is None:
                        before = insert_position(store, api.queue_get(reload=True)["items"], request.priority)
                        place = {"before_uid": before} if before else {"pos": "back"}
                    response = api.item_add(item, user=submitter, user_group=user_group, **place)
                except RequestFailedError as exc:
                    raise _refusal(exc, request.experiment, user_group, before) from None
                except _api_errors() as exc:
                    raise QueueServerError(
                        f"the queue server does not answer ({exc}): is the stack up (`orchestrion up`)?"
                    ) from None
                store.update(job_id, status=JobStatus.QUEUED, item_uid=response["item"]["item_uid"])
            job = store.get(job_id)
            logger.info("job %d: %s queued with priority %d", job.id, job.experiment, job.priority)
            return job
        except _MovedOn:
            # The job it was to go before started meanwhile: look at the queue again.
            if attempt == attempts:
                raise QueueServerError("the queue kept changing under the submission; try again") from None
    raise AssertionError("unreachable")


class _MovedOn(Exception):
    pass


def _refusal(exc: Exception, experiment: str, user_group: str, before: str | None) -> Exception:
    message = str(exc).strip()
    if before is not None and before in message:
        return _MovedOn()
    first = message.splitlines()[0] if message else type(exc).__name__
    first = first.removeprefix("Request failed: ").removeprefix("Failed to add an item: ")
    if "not in the list of allowed plans" in message or "permission" in message.lower():
        return InputError(f"user group '{user_group}' may not run '{experiment}': {first}")
    return InputError(f"the queue server refused '{experiment}': {first}")


def cancel_job(store: JobStore, api: Any, job_id: int, *, timeout: float = 30.0) -> Job:
    """Remove a queued job from the queue; abort a running one.  Done jobs stay done."""
    from bluesky_queueserver_api.comm_base import RequestFailedError

    with store.write():
        job = store.get(job_id)
        if job.status.terminal:
            raise InputError(f"job {job_id} is already {job.status.value}")
        if job.status is not JobStatus.RUNNING:
            try:
                if job.item_uid is not None:
                    api.item_remove(uid=job.item_uid)
            except RequestFailedError:
                running = (api.queue_get(reload=True).get("running_item") or {}).get("item_uid")
                if running != job.item_uid:
                    raise
                # It started in the meantime: abort it like any running job (below).
            else:
                store.update(job_id, status=JobStatus.CANCELLED, finished=time.time(), error="cancelled before it ran")
                return store.get(job_id)
    # Abort only if it is this job that runs: the table may be a poll behind.
    running = (api.queue_get(reload=True).get("running_item") or {}).get("item_uid")
    if running != job.item_uid:
        job = store.get(job_id)
        if job.status.terminal:
            return job
        raise InputError(f"job {job_id} is not running (it is {job.status.value}); try again")
    abort_running(api, timeout=timeout)
    return store.get(job_id)


def abort_running(api: Any, *, timeout: float = 30.0) -> None:
    """Abort the running plan (pausing it first, as the RunEngine requires)."""
    status = api.status(reload=True)
    if status["manager_state"] == "executing_queue":
        api.re_pause(option="immediate")
        api.wait_for_condition(lambda s: s["manager_state"] in ("paused", "idle"), timeout=timeout)
    if api.status(reload=True)["manager_state"] == "paused":
        api.re_abort()
