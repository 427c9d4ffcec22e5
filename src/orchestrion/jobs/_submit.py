"""Submitting and controlling jobs: validate, write the row, queue the item, in one step."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, StrictInt

from orchestrion.config import OrchestrionConfig
from orchestrion.devices import DeviceRegistry
from orchestrion.errors import InputError, OrchestrionError
from orchestrion.experiment import ExperimentLibrary, RunLimits, RunRequest, prepare_run
from orchestrion.parameters import open_parameter_store
from orchestrion.schema import EXECUTOR_PLAN, JOB_ID_KEY

from ._store import Job, JobStatus, JobStore, NewJob

logger = logging.getLogger(__name__)


class QueueServerError(OrchestrionError):
    """The queue server cannot be reached, or refused a request for a reason not the user's."""


class JobRequest(RunRequest):
    """A `RunRequest` for the queue, with its priority (higher runs sooner)."""

    priority: StrictInt = Field(0, description="Higher runs sooner; ties run in submission order")


def validate_request(
    library: ExperimentLibrary, devices: DeviceRegistry, request: JobRequest, *, limits: RunLimits
) -> dict[str, Any]:
    """Check a request completely (no store opened, nothing moved); the plan's kwargs.

    Parameter values given as text (from a command line) come back typed, so the queue
    server's own type checks see numbers where the plan expects numbers.  The metadata
    is left out: submission adds it with the job's own keys.
    """
    if JOB_ID_KEY in request.md:
        raise InputError(f"metadata key '{JOB_ID_KEY}' is Orchestrion's own")
    # The hardware is the worker's: a device it could not connect is refused here too.
    devices.use_connection_reports = True
    checked = prepare_run(library.experiment(request.experiment), devices, request, limits=limits)
    typed: dict[str, Any] = dict(checked.overrides)
    typed.update({pid: value for pid, (_, value) in checked.device_settings.items()})
    return request.model_copy(update={"parameters": typed, "pattern": checked.pattern.value, "md": {}}).plan_kwargs()


def check_parameter_store(config: OrchestrionConfig) -> None:
    """Refuse a submission while the lab's InfluxDB is unreachable: the job could only fail.

    Raises `ParameterStoreUnavailable` naming the server.  The embedded SQLite store has
    no server to be down, so it is not opened here.
    """
    if config.influx_url:
        open_parameter_store(config).close()


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


def submit_job(
    store: JobStore,
    api: Any,
    request: JobRequest,
    kwargs: Mapping[str, Any],
    *,
    submitter: str,
    user_group: str,
    code: tuple[str | None, bool | None] = (None, None),
    parent: int | None = None,
) -> Job:
    """Write the job row and see that an executor item will run it, or do neither.

    ``kwargs`` are the validated plan arguments (`validate_request`).  The queue server's
    permissions for ``user_group`` are checked first (`InputError` names a refusal); the
    job then waits in the table, where the executor claims it in priority order (ADR
    0310), and an executor item is queued where the job belongs among plain items.  If
    the queue server cannot be reached, the row is rolled back.
    """
    with store.write():
        try:
            _check_permission(api, request.experiment, user_group)
            queue = api.queue_get(reload=True)
            adopt_plain_items(store, queue["items"])
            arguments = dict(kwargs)
            if request.md:
                arguments["md"] = dict(request.md)
            job_id = store.insert(
                NewJob(
                    experiment=request.experiment, arguments=arguments, priority=request.priority,
                    submitter=submitter, user_group=user_group, scan=request.scan,
                    repetitions=request.repetitions, shots=request.shots, pattern=request.pattern,
                    code_commit=code[0], code_clean=code[1], parent=parent, status=JobStatus.QUEUED,
                )
            )  # fmt: skip
            place_executor(store, api, queue)
        except _api_errors() as exc:
            raise QueueServerError(
                f"the queue server does not answer ({exc}): is the stack up (`orchestrion up`)?"
            ) from None
    job = store.get(job_id)
    logger.info("job %d: %s queued with priority %d", job.id, job.experiment, job.priority)
    return job


def item_job_id(item: Mapping[str, Any]) -> int | None:
    """The job id a queue item carries in its metadata (items from Orchestrion do)."""
    md = (item.get("kwargs") or {}).get("md")
    job_id = md.get(JOB_ID_KEY) if isinstance(md, Mapping) else None
    return job_id if isinstance(job_id, int) and not isinstance(job_id, bool) else None


def adopted_job(item: Mapping[str, Any], status: JobStatus) -> NewJob:
    """The job row of an item a plain queue-server client added (priority 0, ids the table's)."""
    kwargs = dict(item.get("kwargs") or {})
    scan = kwargs.get("scan")
    shots = kwargs.get("shots")
    repetitions = kwargs.get("repetitions", 1)
    return NewJob(
        experiment=str(item.get("name", "")),
        arguments=kwargs,
        priority=0,
        submitter=str(item.get("user", "")),
        user_group=str(item.get("user_group", "")),
        scan=[str(s) for s in scan] if isinstance(scan, list) else None,
        shots=shots if isinstance(shots, int) else None,
        repetitions=repetitions if isinstance(repetitions, int) else 1,
        pattern=str(kwargs.get("pattern", "linear")),
        source="queueserver",
        status=status,
        item_uid=str(item["item_uid"]),
    )


def _check_permission(api: Any, experiment: str, user_group: str) -> None:
    """The queue server's own rule for ``user_group`` (`profile/user_group_permissions.yaml`).

    The client caches the allowed plans until the queue server says they changed.
    """
    from bluesky_queueserver_api.comm_base import RequestFailedError

    try:
        allowed = api.plans_allowed(user_group=user_group)["plans_allowed"]
    except RequestFailedError as exc:
        raise InputError(f"user group '{user_group}' may not run '{experiment}': {exc}") from None
    if experiment not in allowed:
        raise InputError(f"user group '{user_group}' may not run '{experiment}': not in its list of allowed plans")


def adopt_plain_items(store: JobStore, items: Sequence[Mapping[str, Any]]) -> None:
    """Give the queued items of plain clients that the table does not know yet their job rows.

    Before a submission's own row: a plain item queued before the job is older than it,
    which is how the executor orders them (plain items count as priority 0).  Items that
    name a job id are left to the scheduler (it tells pushed-back copies from new items).
    """
    plain = [i for i in items if not _executor_item(i) and item_job_id(i) is None]
    known = store.by_item_uids([str(i["item_uid"]) for i in plain])
    for item in plain:
        if str(item["item_uid"]) not in known:
            store.insert(adopted_job(item, JobStatus.QUEUED))


def _executor_item(item: Mapping[str, Any]) -> bool:
    return item.get("name") == EXECUTOR_PLAN


def place_executor(store: JobStore, api: Any, queue: Mapping[str, Any] | None = None) -> None:
    """Keep one executor item in the queue server's queue while Orchestrion's jobs wait.

    It goes where the next waiting job belongs among plain items (plain items count as
    priority 0, ties by the time they were queued): before the first plain item that
    should run after that job.  No executor item is queued when no job waits, or when a
    running executor that has not retired will take them all (no plain item waits).
    Called by submissions and by the scheduler, which passes the ``queue`` it has just
    read (a request is made only when something must change).
    """
    from bluesky_queueserver_api import BPlan

    with store.write():
        queue = queue if queue is not None else api.queue_get(reload=True)
        items = list(queue["items"])
        executors = [i for i in items if _executor_item(i)]
        plain = [i for i in items if not _executor_item(i)]
        top = store.next_executor_job()
        running = queue.get("running_item") or {}
        live = _executor_item(running) and str(running.get("item_uid")) not in store.retired_executors()
        if top is None or (live and not plain):
            for item in executors:
                _remove_quietly(api, str(item["item_uid"]))
            return
        jobs = store.by_item_uids([str(i["item_uid"]) for i in plain])
        target = len(plain)
        for index, item in enumerate(plain):
            job = jobs.get(str(item["item_uid"]))
            # An item the table does not know yet was queued before anything it knows.
            priority, created = (job.priority, job.created) if job is not None else (0, 0.0)
            if (priority, -created) < (top.priority, -top.created):
                target = index
                break
        place = {"before_uid": str(plain[target]["item_uid"])} if target < len(plain) else {"pos": "back"}
        for item in executors[1:]:
            _remove_quietly(api, str(item["item_uid"]))
        if not executors:
            api.item_add(BPlan(EXECUTOR_PLAN), user=EXECUTOR_USER, user_group=EXECUTOR_GROUP, **place)
            return
        keep = executors[0]
        position = sum(1 for i in items[: items.index(keep)] if not _executor_item(i))
        if position != target:
            api.item_move(uid=str(keep["item_uid"]), **place)


# Who adds the executor items: the group may run every plan (the executor runs jobs whose
# own groups were checked at submission).
EXECUTOR_USER = "orchestrion"
EXECUTOR_GROUP = "admin"


def _remove_quietly(api: Any, item_uid: str) -> None:
    from bluesky_queueserver_api.comm_base import RequestFailedError

    try:
        api.item_remove(uid=item_uid)
    except RequestFailedError as exc:  # it started or went meanwhile
        logger.debug("executor item %s: %s", item_uid, exc)


def change_priority(store: JobStore, api: Any, job_id: int, priority: int) -> Job:
    """Give a queued job another priority: honoured at the executor's next claim."""
    with store.write():
        job = store.get(job_id)
        if job.status is not JobStatus.QUEUED:
            raise InputError(f"job {job_id} is {job.status.value}; only a queued job can change priority")
        store.update(job_id, priority=priority)
        if job.item_uid is None:
            place_executor(store, api)
            return store.get(job_id)
        # A plain item's job: its own item moves.
        items = [i for i in api.queue_get(reload=True)["items"] if i["item_uid"] != job.item_uid]
        before = insert_position(store, items, priority)
        api.item_move(uid=job.item_uid, **({"before_uid": before} if before else {"pos": "back"}))
    return store.get(job_id)


def cancel_job(store: JobStore, api: Any, job_id: int, *, timeout: float = 30.0) -> Job:
    """Cancel a queued job (the table alone, or a plain item's own item); abort a running one.

    Done jobs stay done; a job whose run is over and being written is not aborted.
    """
    from bluesky_queueserver_api.comm_base import RequestFailedError

    with store.write():
        job = store.get(job_id)
        if job.status.terminal:
            raise InputError(f"job {job_id} is already {job.status.value}")
        if job.status is JobStatus.WRITING:
            raise InputError(f"job {job_id} has finished running; its data are being written")
        if job.status in (JobStatus.QUEUED, JobStatus.SUBMITTED):
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
                if job.item_uid is None:
                    place_executor(store, api)
                return store.get(job_id)
    # Abort only if it is this job that runs: the table may be a poll behind.
    running = (api.queue_get(reload=True).get("running_item") or {}).get("item_uid")
    if running is None or running not in _items_of(store.get(job_id)):
        job = store.get(job_id)
        if job.status.terminal:
            return job
        raise InputError(f"job {job_id} is not running (it is {job.status.value}); try again")
    abort_running(api, store=store, timeout=timeout)
    return store.get(job_id)


def _items_of(job: Job) -> set[str]:
    """The queue items that may be running ``job``: its own, or its current attempt's executor."""
    items = {job.item_uid} if job.item_uid else set()
    if job.attempts and job.attempts[-1].finished is None:
        items.add(job.attempts[-1].item_uid)
    return items


def _running_item(api: Any) -> dict[str, Any]:
    return dict(api.queue_get(reload=True).get("running_item") or {})


def describe_item(store: JobStore, item: Mapping[str, Any]) -> str:
    """'job 12 (spectroscopy)', or the plain item's name and uid the table does not know yet."""
    uid = str(item.get("item_uid"))
    job = store.by_item_uids([uid]).get(uid) or (store.running_in(uid) if _executor_item(item) else None)
    if job is not None:
        return f"job {job.id} ({job.experiment})"
    return f"queue item {str(item.get('item_uid', '?'))[:8]} ({item.get('name', '?')})"


def pause_running(store: JobStore, api: Any, *, immediate: bool = False, timeout: float = 30.0) -> str:
    """Pause the running job (at its next checkpoint, or at once); what was paused."""
    state = api.status(reload=True)["manager_state"]
    if state == "paused":
        raise InputError("the running job is already paused (`orchestrion resume` goes on)")
    if state != "executing_queue":
        raise InputError(f"nothing is running to pause (the queue server is {state})")
    item = _running_item(api)
    api.re_pause(option="immediate" if immediate else "deferred")
    api.wait_for_condition(lambda s: s["manager_state"] in ("paused", "idle"), timeout=timeout)
    what = describe_item(store, item)
    if api.status(reload=True)["manager_state"] != "paused":
        return f"{what} ended before it reached a checkpoint: nothing is paused"
    return f"paused {what}" + ("" if immediate else " at its next checkpoint")


def resume_paused(store: JobStore, api: Any) -> str:
    """Resume the paused job; what was resumed."""
    state = api.status(reload=True)["manager_state"]
    if state != "paused":
        raise InputError(f"nothing is paused to resume (the queue server is {state})")
    item = _running_item(api)
    api.re_resume()
    return f"resumed {describe_item(store, item)}"


def abort_running(api: Any, *, store: JobStore | None = None, timeout: float = 30.0) -> str:
    """Abort the running plan (pausing it first, as the RunEngine requires); what was aborted.

    `InputError` if nothing runs: an abort that does nothing is not a success.
    """
    status = api.status(reload=True)
    if status["manager_state"] not in ("executing_queue", "paused"):
        raise InputError(f"nothing is running to abort (the queue server is {status['manager_state']})")
    item = _running_item(api)
    if status["manager_state"] == "executing_queue":
        api.re_pause(option="immediate")
        api.wait_for_condition(lambda s: s["manager_state"] in ("paused", "idle"), timeout=timeout)
    if api.status(reload=True)["manager_state"] != "paused":
        raise InputError("the job ended before it could be aborted")
    # The queue server pushes a copy of an aborted item back to the front of its queue and
    # turns its autostart off only after that, so the copy may start at once: hold the
    # queue until the scheduler has removed the copy (it turns autostart on again).
    api.queue_autostart(False)
    api.re_abort()
    what = describe_item(store, item) if store is not None else f"queue item {item.get('name', '?')}"
    return f"aborted {what}: recorded cancelled; the queue goes on"
