"""The scheduler: keeps the job table in step with what the queue server really did.

Jobs enter the queue server's queue at submission, already in priority order (see
`_submit.py`); the queue server runs them one at a time, starting each as soon as the
previous ends (its autostart mode) and going on after a failure (its `ignore_failures`
mode; ADR 0301).  This process follows the queue server's status, queue and history
and records in the job table when each job started, how it ended and with which runs.
It also adopts items that plain queue-server clients added, removes the copies that
the queue server pushes back to the front of its queue after an abort, and re-opens
the worker environment when it is gone.  It keeps no state of its own that matters:
after a restart it reads everything again from the queue server.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrion.addresses import close_api, queue_server_api, run_dir
from orchestrion.config import OrchestrionConfig
from orchestrion.schema import JOB_ID_KEY

from ._store import ACTIVE, Job, JobStatus, JobStore, NewJob

logger = logging.getLogger(__name__)

# How the queue server's exit statuses map onto job statuses.  'stopped' is a plan
# that a user stopped cleanly: its data are good, so the job is done.
EXIT_STATUS = {
    "completed": JobStatus.DONE,
    "stopped": JobStatus.DONE,
    "failed": JobStatus.FAILED,
    "aborted": JobStatus.CANCELLED,
    "halted": JobStatus.CANCELLED,
    "unknown": JobStatus.FAILED,  # the worker died or its environment was closed under it
}

HEARTBEAT_FILE = "scheduler.json"


def item_job_id(item: Mapping[str, Any]) -> int | None:
    """The job id a queue item carries in its metadata (items from Orchestrion do)."""
    md = (item.get("kwargs") or {}).get("md")
    job_id = md.get(JOB_ID_KEY) if isinstance(md, Mapping) else None
    return job_id if isinstance(job_id, int) and not isinstance(job_id, bool) else None


def _adopted(item: Mapping[str, Any], status: JobStatus) -> NewJob:
    kwargs = dict(item.get("kwargs") or {})
    scan = kwargs.get("scan")
    shots = kwargs.get("shots")
    repetitions = kwargs.get("repetitions", 1)
    return NewJob(
        id=item_job_id(item),
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


class Scheduler:
    """Follows one queue server and keeps one job table in step with it."""

    def __init__(self, config: OrchestrionConfig, *, store: JobStore | None = None, api: Any = None) -> None:
        self.config = config
        self.store = store or JobStore.open(config)
        self.api = api or queue_server_api(config)
        self._history: list[dict[str, Any]] = []
        self._history_uid: str | None = None
        self._seen_history: set[str] = set()
        self._last_status: tuple[Any, ...] | None = None
        self._missing: set[int] = set()  # active jobs whose item was not seen last time

    def close(self) -> None:
        close_api(self.api)
        self.store.close()

    # -- keeping the queue server ready --------------------------------------------------

    def prepare(self, timeout: float = 120.0) -> None:
        """Open the worker environment and set the queue modes a lab wants; idempotent."""
        status = self.api.status(reload=True)
        if not status["worker_environment_exists"]:
            self.api.environment_open()
            self.api.wait_for_condition(
                lambda s: s["worker_environment_exists"] and s["manager_state"] == "idle", timeout=timeout
            )
            status = self.api.status(reload=True)
            if not status["worker_environment_exists"]:
                raise RuntimeError("the queue server's worker environment did not open: see its log")
        if not status["plan_queue_mode"].get("ignore_failures", False):
            self.api.queue_mode_set(ignore_failures=True)
        if not status["queue_autostart_enabled"]:
            self.api.queue_autostart(True)

    # -- following the queue server -------------------------------------------------------

    def poll(self) -> bool:
        """Sync if the queue server's state changed since the last look; True if it did."""
        status = self.api.status(reload=True)
        key = (
            status["plan_queue_uid"],
            status["plan_history_uid"],
            status["running_item_uid"],
            status["manager_state"],
            status["queue_autostart_enabled"],
            status["worker_environment_exists"],
        )
        if key == self._last_status:
            return False
        self.sync()
        self._last_status = key
        return True

    def sync(self) -> None:
        """Bring the job table in line with the queue server's queue and history."""
        # Queue first, then status and history: an item that leaves the queue (or the
        # running slot) between the reads is then already in the history read after.
        # The reads happen outside the table's write lock, which the worker's recorder
        # and submissions also take: holding it across requests to the queue server
        # would make them wait.
        queue = self.api.queue_get(reload=True)
        status = self.api.status(reload=True)
        if status["plan_history_uid"] != self._history_uid:
            self._history = list(self.api.history_get(reload=True)["items"])
            self._history_uid = status["plan_history_uid"]
        running = queue.get("running_item") or {}
        with self.store.write():
            requeue_needed = self._sync_history(self._history)
            self._sync_running(running)
            requeue_needed |= self._sync_queue(list(queue["items"]))
            present = {i["item_uid"] for i in queue["items"]} | {h["item_uid"] for h in self._history}
            if running:
                present.add(running["item_uid"])
            self._sync_missing(present)
        self._keep_running(status, requeue_needed)

    def _sync_history(self, history: Sequence[Mapping[str, Any]]) -> bool:
        new = [h for h in history if h["item_uid"] not in self._seen_history]
        known = self.store.by_item_uids([h["item_uid"] for h in new])
        interrupted = False
        for item in new:
            result = item.get("result") or {}
            exit_status = str(result.get("exit_status", "unknown"))
            status = EXIT_STATUS.get(exit_status, JobStatus.FAILED)
            job = known.get(item["item_uid"])
            job_id = item_job_id(item)
            if job is None and (job_id is None or self.store.find(job_id) is None):
                logger.info("adopting finished item %s (%s) from the queue server", item["item_uid"], item.get("name"))
                job = self.store.get(self.store.insert(_adopted(item, JobStatus.RUNNING)))
            if job is not None and not job.status.terminal:
                self._finish(job, item, status, exit_status)
                interrupted |= exit_status in ("stopped", "aborted", "halted")
            self._seen_history.add(item["item_uid"])
        return interrupted

    def _finish(self, job: Job, item: Mapping[str, Any], status: JobStatus, exit_status: str) -> None:
        result = item.get("result") or {}
        error = None
        if status is JobStatus.FAILED:
            error = str(result.get("msg") or "").strip() or f"the plan ended with exit status '{exit_status}'"
            if exit_status == "unknown":
                error = "the queue server lost the worker while the job ran (exit status 'unknown')"
        elif status is JobStatus.CANCELLED:
            error = f"{exit_status} while running"
        self.store.add_run_uids(job.id, [str(u) for u in result.get("run_uids") or []])
        self.store.update(
            job.id, status=status, error=error, started=result.get("time_start") or job.started,
            finished=result.get("time_stop") or time.time(),
        )  # fmt: skip
        logger.info("job %d: %s", job.id, status.value + (f" ({error})" if error else ""))

    def _sync_running(self, running: Mapping[str, Any]) -> None:
        if not running:
            return
        job = self.store.by_item_uids([running["item_uid"]]).get(running["item_uid"])
        if job is None:
            job_id = item_job_id(running)
            if job_id is not None and self.store.find(job_id) is not None:
                return  # a pushed-back copy of a job, started by someone else: leave it be
            job = self.store.get(self.store.insert(_adopted(running, JobStatus.RUNNING)))
        if job.status in (JobStatus.SUBMITTED, JobStatus.QUEUED):
            self.store.update(job.id, status=JobStatus.RUNNING, started=time.time())
            logger.info("job %d: running", job.id)

    def _sync_queue(self, items: Sequence[Mapping[str, Any]]) -> bool:
        known = self.store.by_item_uids([i["item_uid"] for i in items])
        removed = False
        for item in items:
            job = known.get(item["item_uid"])
            if job is None:
                job_id = item_job_id(item)
                owner = self.store.find(job_id) if job_id is not None else None
                if owner is not None and owner.status.terminal:
                    # The queue server pushes an aborted or stopped item back to the
                    # front of its queue under a new uid; the job is over, so it goes.
                    self._remove_item(item["item_uid"], f"job {owner.id} ({owner.status.value})")
                    removed = True
                elif owner is None:
                    self.store.insert(_adopted(item, JobStatus.QUEUED))
            elif job.status.terminal:
                self._remove_item(item["item_uid"], f"job {job.id} ({job.status.value})")
                removed = True
        return removed

    def _remove_item(self, item_uid: str, why: str) -> None:
        from bluesky_queueserver_api.comm_base import RequestFailedError

        try:
            self.api.item_remove(uid=item_uid)
            logger.info("removed queue item %s of %s", item_uid, why)
        except RequestFailedError as exc:  # gone already: someone else removed it
            logger.debug("queue item %s: %s", item_uid, exc)

    def _sync_missing(self, present: set[str]) -> None:
        # A job submitted just after this look at the queue server is not in what was
        # read: only a job missing from two looks in a row has really left.
        suspects: set[int] = set()
        for job in self.store.list(list(ACTIVE)):
            if job.item_uid is None or job.item_uid in present:
                continue
            if job.id not in self._missing:
                suspects.add(job.id)
                continue
            logger.warning("job %d: its item left the queue server without running", job.id)
            self.store.update(
                job.id, status=JobStatus.CANCELLED, finished=time.time(),
                error="removed from the queue server's queue outside Orchestrion",
            )  # fmt: skip
        self._missing = suspects
        if suspects:
            self._last_status = None  # look again at the next poll, not in 5 s

    def _keep_running(self, status: Mapping[str, Any], interrupted: bool) -> None:
        """After an abort the queue server stops its queue; the lab's queue goes on."""
        if not status["worker_environment_exists"]:
            if status["manager_state"] == "idle":
                logger.warning("the worker environment is closed: opening it again")
                self.api.environment_open()
            return
        if interrupted or not status["queue_autostart_enabled"]:
            self.api.queue_autostart(True)

    # -- the process ----------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set, writing a heartbeat that `orchestrion status` reads."""
        heartbeat = run_dir(self.config) / HEARTBEAT_FILE
        last_beat = 0.0
        last_full = time.monotonic()
        while not stop.is_set():
            try:
                if not self.poll() and time.monotonic() - last_full > 5.0:
                    self.sync()  # a slow safety net for changes the status does not show
                    last_full = time.monotonic()
            except Exception as exc:  # the queue server restarting: keep trying
                logger.warning("scheduler: %s: %s", type(exc).__name__, exc)
                self._last_status = None
                stop.wait(1.0)
            now = time.time()
            if now - last_beat > 1.0:
                _write_heartbeat(heartbeat, now)
                last_beat = now
            stop.wait(self.config.scheduler_poll_interval)


def _write_heartbeat(path: Path, now: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "heartbeat": now}))
    temporary.replace(path)


def read_heartbeat(config: OrchestrionConfig) -> dict[str, Any] | None:
    try:
        value = json.loads((run_dir(config) / HEARTBEAT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
