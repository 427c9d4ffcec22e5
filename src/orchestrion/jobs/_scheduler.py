"""The scheduler: keeps the job table in step with what the queue server really did.

Jobs enter the queue server's queue at submission, already in priority order (see
`_submit.py`); the queue server runs them one at a time, starting each as soon as the
previous ends (its autostart mode) and going on after a failure (its `ignore_failures`
mode; ADR 0301).  This process follows the queue server's status, queue and history
and records in the job table when each job started, how it ended and with which runs.
It also adopts items that plain queue-server clients added (each a new job: ids are
the table's alone), decides what happens to the copies that the queue server pushes
back to the front of its queue after an abort or a fault, watches the worker process
(a worker killed under a job stays a zombie the manager does not notice) and re-opens
the worker environment when it is gone.  Every item that ran for a job is one of the
job's attempts, with its runs, files and outcome.  It keeps no state of its own that
matters: after a restart it reads everything again from the queue server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrion.addresses import close_api, queue_server_api, run_dir, worker_state_file
from orchestrion.config import OrchestrionConfig
from orchestrion.processes import death
from orchestrion.schema import EXECUTOR_PLAN

from ._confirmations import BusConfirmations
from ._store import ACTIVE, Attempt, Job, JobStatus, JobStore
from ._submit import adopted_job, item_job_id, place_executor

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

# bluesky-queueserver 0.0.25's message for an item cut short by `environment_destroy`
# (its exit status is then 'failed', like a plan that raised).
WORKER_DESTROYED = "RE Worker environment was destroyed"
# Exit statuses after which the queue server pushes a copy of the item back to its queue.
PUSHED_BACK = ("aborted", "halted")
# Manager states in which the worker may legitimately be missing or changing.
_ENVIRONMENT_CHANGING = ("creating_environment", "closing_environment", "destroying_environment")


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
        self._last_open = 0.0  # when this scheduler last asked for the environment
        self._stuck_since: float | None = None  # manager running an item its idle worker finished
        self._copy_due: float | None = None  # until then, a pushed-back copy to remove may still come
        # Services mode: `writing` jobs are also confirmed from the bus workers' records.
        self.confirmations = BusConfirmations(config, self.store) if config.post_processing_workers else None

    def close(self) -> None:
        close_api(self.api)
        if self.confirmations is not None:
            self.confirmations.close()
        self.store.close()

    # -- keeping the queue server ready --------------------------------------------------

    def prepare(self, timeout: float = 120.0, *, autostart: bool = True) -> None:
        """Open the worker environment and set the queue modes a lab wants; idempotent.

        A worker whose start-up fails is reported with its own error as soon as it says
        so (`RuntimeError`), not after ``timeout``.  ``autostart=False`` leaves the queue
        held: the scheduler starts it after its first look at the queue and history, so a
        copy that the queue server pushed back is not run before it is decided on.
        """
        status = self.api.status(reload=True)
        if self.check_worker(status) is not None:  # destroyed: wait until it is gone
            self.api.wait_for_condition(lambda s: not s["worker_environment_exists"], timeout=30.0)
            status = self.api.status(reload=True)
        if not status["worker_environment_exists"]:
            self.open_environment(timeout)
            status = self.api.status(reload=True)
        if not status["plan_queue_mode"].get("ignore_failures", False):
            self.api.queue_mode_set(ignore_failures=True)
        if autostart and not status["queue_autostart_enabled"]:
            self.api.queue_autostart(True)

    def open_environment(self, timeout: float = 120.0) -> None:
        """Open the worker environment and wait until it is open, or fail with the worker's reason."""
        asked = time.time()
        self.api.environment_open()
        deadline = time.monotonic() + timeout
        while True:
            status = self.api.status(reload=True)
            if status["worker_environment_exists"] and status["manager_state"] == "idle":
                return
            state = read_worker_state(self.config)
            started = state is not None and float(state.get("time", 0.0)) >= asked
            if started and state is not None and state.get("state") == "failed":
                raise RuntimeError(f"the worker's start-up failed: {state.get('error')}")
            if status["manager_state"] == "idle" and not status["worker_environment_exists"] and started:
                raise RuntimeError("the worker exited while it started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker environment did not open in {timeout:.0f} s")
            time.sleep(0.1)

    def check_worker(self, status: Mapping[str, Any]) -> str | None:
        """If the environment is open but its worker process is dead: destroy it; the reason.

        bluesky-queueserver 0.0.25's manager keeps a SIGKILLed worker as a zombie and goes
        on reporting the environment open; destroying it ends the running item (the queue
        server records it failed and pushes a copy back), and `sync` then decides.
        """
        if not status["worker_environment_exists"] or status["manager_state"] in _ENVIRONMENT_CHANGING:
            return None
        state = read_worker_state(self.config)
        pid = state.get("pid") if state is not None else None
        if not isinstance(pid, int):
            return None
        how = death(pid)
        if how is None:
            return None
        reason = f"the queue server's worker (pid {pid}) died ({how})"
        logger.error("%s: destroying its environment", reason)
        running = status.get("running_item_uid")
        if running:
            self.store.note_interruption(str(running), reason)
        self.api.environment_destroy()
        self._last_status = None
        return reason

    def check_manager(self, status: Mapping[str, Any]) -> bool:
        """If the manager has been stuck (see `manager_stuck`) for a while: restart it; True if so.

        Its own watchdog starts a new manager, which reads the queue, the history and the
        autostart mode back from Redis and files an item it was running (exit status
        'unknown'); what the worker recorded of its runs then says how it really ended
        (`_finish`).
        """
        stuck = manager_stuck(status)
        if stuck is None:
            self._stuck_since = None
            return False
        why, patience = stuck
        now = time.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
        if now - self._stuck_since < patience:
            return False
        logger.error("the queue server's manager %s: restarting it", why)
        self._stuck_since = None
        with contextlib.suppress(Exception):  # it exits without answering
            self.api.send_request(method="manager_kill")
        self._last_status = None
        return True

    # -- following the queue server -------------------------------------------------------

    def poll(self) -> bool:
        """Sync if the queue server's state changed since the last look; True if it did."""
        status = self.api.status(reload=True)
        self.check_worker(status)
        self.check_manager(status)
        key = (
            status["plan_queue_uid"],
            status["plan_history_uid"],
            status["running_item_uid"],
            status["manager_state"],
            status["queue_autostart_enabled"],
            status["worker_environment_exists"],
            # The next job an executor would take: a live executor claiming jobs changes
            # where the queued executor item belongs, without the queue server changing.
            getattr(self.store.next_executor_job(), "id", None),
        )
        if key == self._last_status:
            return False
        # Before the sync: a sync that wants another look (`_sync_missing`) resets it.
        self._last_status = key
        self.sync()
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
            self._sync_running(running, str(status["manager_state"]))
            requeue_needed |= self._sync_queue(list(queue["items"]))
            queued = {i["item_uid"] for i in queue["items"]}
            if running:
                queued.add(running["item_uid"])
            self._sync_missing(queued, {h["item_uid"] for h in self._history})
        if status["worker_environment_exists"]:
            place_executor(self.store, self.api, queue)
        self._keep_running(status, requeue_needed)

    def _copy_owner(self, item: Mapping[str, Any]) -> Job | None:
        """The job whose pushed-back item ``item`` is a copy of, if it is one.

        The queue server pushes an aborted, halted or destroyed item back under a new uid,
        with the same plan and metadata; only the job's last attempt can have one.  Any
        other item naming a job id (a finished job's, or one never issued) is not that
        job's: it becomes a job of its own.
        """
        job_id = item_job_id(item)
        owner = self.store.find(job_id) if job_id is not None else None
        if owner is None or not owner.attempts:
            return None
        last = owner.attempts[-1]
        if not last.pushed_back or owner.item_uid != last.item_uid or item.get("name") != owner.experiment:
            return None
        return owner

    def _sync_history(self, history: Sequence[Mapping[str, Any]]) -> bool:
        new = [h for h in history if h["item_uid"] not in self._seen_history]
        known = self.store.by_item_uids([h["item_uid"] for h in new])
        interrupted = False
        for item in new:
            if item.get("name") == EXECUTOR_PLAN:
                interrupted |= self._finish_executor(item)
                self._seen_history.add(item["item_uid"])
                continue
            job = known.get(item["item_uid"]) or self.store.by_attempt(item["item_uid"])
            if job is None:
                owner = self._copy_owner(item)
                if owner is not None:  # a copy that ran while nobody looked: one more attempt
                    self.store.update(owner.id, item_uid=item["item_uid"])
                    job = self.store.get(owner.id)
                else:
                    logger.info("adopting finished item %s (%s)", item["item_uid"], item.get("name"))
                    job = self.store.get(self.store.insert(adopted_job(item, JobStatus.RUNNING)))
            if all(a.item_uid != item["item_uid"] for a in job.attempts):
                interrupted |= self._finish(job, item)
            self._seen_history.add(item["item_uid"])
        return interrupted

    def _finish_executor(self, item: Mapping[str, Any]) -> bool:
        """An executor item is over: the jobs it did not end itself were cut short.

        The executor records each job it runs; what is left running in its item when the
        item ends is a job its worker died under (or whose environment was destroyed), or
        one an abort tore down before the executor could say so.  A job in `WRITING` whose
        worker died waits for confirmations that will not come from it: in services mode
        the bus workers' records end it (`BusConfirmations`), otherwise it ends `incomplete`.
        """
        uid = str(item["item_uid"])
        result = item.get("result") or {}
        exit_status = str(result.get("exit_status", "unknown"))
        message = str(result.get("msg") or "").strip()
        fault = exit_status == "unknown" or message == WORKER_DESTROYED
        for job in self.store.unfinished_in(uid):
            reason = self.store.interruption(uid)
            if job.status is JobStatus.WRITING:
                if fault and self.confirmations is not None:
                    self.store.update(job.id, finished=job.finished or time.time(), error=(
                        f"{reason or 'the worker died'} after its run stopped; its runs are confirmed"
                        " as the post-processing workers write them"
                    ))  # fmt: skip
                elif fault:
                    self.store.update(job.id, status=JobStatus.INCOMPLETE, error=(
                        f"{reason or 'the worker died'} before post-processing confirmed its runs written"
                        + (f"; data in {job.hdf5}" if job.hdf5 else "")
                    ))  # fmt: skip
                continue
            if fault:
                status = JobStatus.FAILED
                error = reason or (message if message else "the queue server lost the worker while the job ran")
            elif exit_status in PUSHED_BACK:
                status, error = JobStatus.CANCELLED, reason or f"{exit_status} while running"
            else:
                status, error = JobStatus.FAILED, reason or message or f"its executor ended with '{exit_status}'"
            ended = self.store.end_attempt(job.id, uid, status, exit_status=exit_status, error=error)
            # A job's plan failing ends it: its failed attempts are faults.
            faults = sum(1 for a in ended.attempts if a.status is JobStatus.FAILED)
            if fault and faults <= self.config.job_fault_retries:
                self.store.update(job.id, status=JobStatus.QUEUED, finished=None,
                                  error=f"attempt {len(ended.attempts)}: {error}; running it again")  # fmt: skip
            logger.info("job %d (executor %s): %s (%s)", job.id, uid[:8], status.value, error)
        return exit_status in PUSHED_BACK

    def _finish(self, job: Job, item: Mapping[str, Any]) -> bool:
        """Record one attempt of ``job`` (its item is in the history) and what follows from it."""
        result = item.get("result") or {}
        exit_status = str(result.get("exit_status", "unknown"))
        message = str(result.get("msg") or "").strip()
        fault = exit_status == "unknown" or message == WORKER_DESTROYED
        status = JobStatus.FAILED if fault else EXIT_STATUS.get(exit_status, JobStatus.FAILED)
        error = self.store.interruption(str(item["item_uid"]))
        if error is None and status is JobStatus.FAILED:
            if exit_status == "unknown":
                error = "the queue server lost the worker while the job ran (exit status 'unknown')"
            else:
                error = message or f"the plan ended with exit status '{exit_status}'"
        elif error is None and status is JobStatus.CANCELLED:
            error = f"{exit_status} while running"
        started = result.get("time_start") or job.started
        finished = result.get("time_stop") or time.time()
        # The runs: what the queue server reports, and what the worker recorded as they
        # opened (a worker that died reported none).
        run_uids = [str(u) for u in result.get("run_uids") or []]
        run_uids += [
            r.run_uid for r in self.store.runs_without_item(job.id)
            if r.run_uid not in run_uids and (r.started or 0.0) >= (started or 0.0) - 1.0
        ]  # fmt: skip
        self.store.claim_runs(str(item["item_uid"]), run_uids, job.id)
        runs = self.store.runs(run_uids)
        if exit_status == "unknown" and runs and all(r.exit_status == "success" for r in runs):
            # The queue server lost the outcome (its manager restarted); the worker recorded
            # each run's stop: they all ended well, so the job did.
            status, error, fault = JobStatus.DONE, None, False
        if status is JobStatus.DONE:
            # Done once post-processing has confirmed its runs written (the recorder ends it).
            written = self.store.runs_written(run_uids)
            status, error = written if written is not None else (JobStatus.WRITING, None)
        counted = [r.points for r in runs]
        attempt = Attempt(
            item_uid=str(item["item_uid"]), status=status, started=started, finished=finished,
            exit_status=exit_status, error=error, run_uids=run_uids, hdf5=[r.hdf5 for r in runs if r.hdf5],
            points=sum(p for p in counted if p is not None) if counted and None not in counted else None,
            pushed_back=exit_status in PUSHED_BACK or message == WORKER_DESTROYED,
        )  # fmt: skip
        attempts = [*job.attempts, attempt]
        faults = sum(1 for a in attempts if a.pushed_back and a.status is JobStatus.FAILED)
        again = fault and attempt.pushed_back and faults <= self.config.job_fault_retries
        last = runs[-1] if runs else None
        self.store.add_run_uids(job.id, run_uids)
        self.store.update(
            job.id, attempts=attempts, started=job.started or started,
            status=JobStatus.QUEUED if again else status,
            error=f"attempt {len(attempts)}: {error}; running it again" if again else error,
            finished=None if again else finished,
            points=last.points if last else None, hdf5=last.hdf5 if last else None,
            tiled=last.tiled if last else None, analysis=last.analysis if last else {},
            **({"parameters_timestamp": last.parameters_timestamp, "code_commit": last.code_commit,
                "code_clean": last.code_clean} if last else {}),
        )  # fmt: skip
        if attempt.pushed_back and not again:
            self._copy_due = time.monotonic() + 3.0
        logger.info(
            "job %d attempt %d: %s%s%s", job.id, len(attempts), status.value,
            f" ({error})" if error else "", "; running it again" if again else "",
        )  # fmt: skip
        return exit_status in PUSHED_BACK

    def _sync_running(self, running: Mapping[str, Any], manager_state: str) -> None:
        if not running:
            return
        status = JobStatus.PAUSED if manager_state == "paused" else JobStatus.RUNNING
        if running.get("name") == EXECUTOR_PLAN:
            current = self.store.running_in(str(running["item_uid"]))
            if current is not None and current.status is not status:
                self.store.update(current.id, status=status)
                logger.info("job %d: %s", current.id, status.value)
            return
        job = self.store.by_item_uids([running["item_uid"]]).get(running["item_uid"])
        if job is None:
            owner = self._copy_owner(running)
            if owner is not None:  # a copy that started while nobody looked: it runs, so it is recorded
                self.store.update(owner.id, item_uid=running["item_uid"])
                job = self.store.get(owner.id)
            else:
                job = self.store.get(self.store.insert(adopted_job(running, JobStatus.RUNNING)))
        if job.status is JobStatus.WRITING:
            return  # its run is over; the manager has not noticed yet
        if job.status is not status:
            self.store.update(job.id, status=status, started=job.started or time.time(), finished=None)
            logger.info("job %d: %s", job.id, status.value)

    def _sync_queue(self, items: Sequence[Mapping[str, Any]]) -> bool:
        known = self.store.by_item_uids([i["item_uid"] for i in items])
        removed = False
        for item in items:
            if item.get("name") == EXECUTOR_PLAN:
                continue  # not a job: it runs jobs (`place_executor` keeps one)
            job = known.get(item["item_uid"])
            if job is None:
                owner = self._copy_owner(item)
                if owner is None:
                    self.store.insert(adopted_job(item, JobStatus.QUEUED))
                elif owner.status is JobStatus.QUEUED:  # the job runs again, as configured
                    self.store.update(owner.id, item_uid=item["item_uid"])
                    logger.info("job %d: its item comes back as %s", owner.id, item["item_uid"])
                else:
                    # The job is over (aborted, or failed with no more attempts): its copy goes.
                    self._remove_item(item["item_uid"], f"job {owner.id} ({owner.status.value})")
                    attempts = [*owner.attempts[:-1], replace(owner.attempts[-1], pushed_back=False)]
                    self.store.update(owner.id, attempts=attempts)
                    self._copy_due = None
                    removed = True
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

    def _sync_missing(self, queued: set[str], history: set[str]) -> None:
        # A job submitted just after this look at the queue server is not in what was
        # read: only a job missing from two looks in a row has really left.
        suspects: set[int] = set()
        for job in self.store.list(list(ACTIVE)):
            if job.item_uid is None or job.item_uid in queued or job.status is JobStatus.WRITING:
                continue
            # An active job whose item is in the history waits to run again (`_finish`).
            waiting_copy = job.item_uid in history
            if job.id not in self._missing:
                suspects.add(job.id)
                continue
            if waiting_copy and job.attempts:
                last = job.attempts[-1]
                logger.warning("job %d: no copy of its item came back to run again", job.id)
                self.store.update(job.id, status=last.status, finished=last.finished, error=last.error)
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
            # Not more than once in a few seconds: a worker that cannot start (its
            # parameter store is down) says why in its log, not in a storm of attempts.
            if status["manager_state"] == "idle" and time.monotonic() - self._last_open > 5.0:
                logger.warning("the worker environment is closed: opening it again")
                self._last_open = time.monotonic()
                self.api.environment_open()
            return
        if status["manager_state"] == "paused":
            return  # an abort may be on its way (`abort_running` holds the queue for it)
        if self._copy_due is not None and time.monotonic() < self._copy_due:
            # The copy the queue server pushes back is not in this look yet: starting the
            # queue now would run it.
            self._last_status = None
            return
        self._copy_due = None
        if interrupted or not status["queue_autostart_enabled"]:
            self.api.queue_autostart(True)

    # -- the process ----------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set, writing a heartbeat that `orchestrion status` reads."""
        heartbeat = run_dir(self.config) / HEARTBEAT_FILE
        last_beat = last_confirmed = 0.0
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
            if self.confirmations is not None and now - last_confirmed > 1.0:
                try:
                    self.confirmations.check()
                except Exception as exc:  # Redis restarting: the next look confirms
                    logger.warning("scheduler: confirming from the bus: %s: %s", type(exc).__name__, exc)
                last_confirmed = now
            if now - last_beat > 1.0:
                _write_heartbeat(heartbeat, now)
                last_beat = now
            stop.wait(self.config.scheduler_poll_interval)


def manager_stuck(status: Mapping[str, Any]) -> tuple[str, float] | None:
    """How the queue server's manager looks stuck, and after how many seconds it surely is.

    From one look at its status; None if it does not look stuck.

    bluesky-queueserver 0.0.25's manager gets stuck in two ways, both with an idle worker:
    - it keeps reporting an item running that its worker finished, when a bookkeeping
      request failed (its Redis restarted under it);
    - it stays 'starting_queue' when the item it was starting left the queue first (a
      cancel, a `queue_clear` or an `item_remove` racing its autostart: the start task
      dies on an IndexError and nothing sets the manager idle again).
    Neither ever moves on by itself.  Starting an item takes one request to the worker
    (milliseconds); filing a finished one takes a few Redis requests, longer under load.
    """
    if status.get("re_state") != "idle" or status.get("worker_environment_state") != "idle":
        return None
    state = status["manager_state"]
    if state == "executing_queue":
        return "has not moved on from a finished item", 5.0
    if state == "starting_queue" and not status.get("running_item_uid"):
        return "did not start the item that left its queue as it started it", 2.0
    return None


def _write_heartbeat(path: Path, now: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "heartbeat": now}))
    temporary.replace(path)


def read_worker_state(config: OrchestrionConfig) -> dict[str, Any] | None:
    """What the queue server's worker last wrote about itself: pid, state, error, time."""
    try:
        value = json.loads(worker_state_file(config).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_heartbeat(config: OrchestrionConfig) -> dict[str, Any] | None:
    try:
        value = json.loads((run_dir(config) / HEARTBEAT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
