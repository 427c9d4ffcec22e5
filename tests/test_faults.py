"""The fault matrix: real SIGKILLs of each stack process during a job, and `down --force`.

One stack serves the module.  After each fault the job table, the queue server's history,
the HDF5 files and the Tiled catalog are checked against each other, attempt by attempt,
and the next job must run without anyone touching the stack.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiled.client import from_uri
from tiled.queries import Key

from orchestrion.client import Client, JobHandle
from orchestrion.config import OrchestrionConfig
from orchestrion.jobs import Job, JobStatus, JobStore, read_worker_state
from orchestrion.schema import EXECUTOR_PLAN
from orchestrion.services import (
    ServiceError,
    close_api,
    down,
    queue_server_api,
    service,
    status,
    stop_service,
    tiled_api_key,
    tiled_uri,
    up,
)

from .support import free_port, running_stack, stack_config, wait_until

# Long enough to be caught mid-run with its file open (the job no longer waits for its
# data at the stop, so the run itself must last: about 10-20 s), short enough to finish.
LONG_POINTS = 1500
LONG = {"scan": [f"spectroscopy.detuning=-1e5:1e5:{LONG_POINTS}"], "shots": 20}
SHORT = {"scan": ["spectroscopy.detuning=-1e5:1e5:3"], "shots": 5}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrchestrionConfig]:
    with running_stack(tmp_path_factory.mktemp("faults") / "home") as config:
        yield config


class TableJob:
    """A job submitted through the API server, read back from the job table itself.

    The fault matrix checks the table's own record (attempts, runs) against the queue
    server, the files and the catalog, so it reads the rows, not the API's view of them.
    """

    def __init__(self, handle: JobHandle, store: JobStore) -> None:
        self.handle, self.store, self.id = handle, store, handle.id

    def refresh(self) -> Job:
        return self.store.get(self.id)

    def wait(self, timeout: float | None = None) -> Job:
        self.handle.wait(timeout=timeout)
        return self.refresh()


class TableClient:
    """The API client, with submissions answered from the job table."""

    def __init__(self, client: Client, store: JobStore) -> None:
        self.client, self.store = client, store

    def submit(self, experiment: str, **fields: Any) -> TableJob:
        return TableJob(self.client.submit(experiment, **fields), self.store)


@pytest.fixture
def client(stack: OrchestrionConfig) -> Iterator[TableClient]:
    store = JobStore.open(stack)
    with Client.local(stack) as opened:
        yield TableClient(opened, store)
        # Every test leaves the stack healthy and idle for the next.
        wait_until(lambda: all(s.health == "ok" for s in status(stack)), timeout=120, what="a healthy stack")
        wait_until(lambda: not store.list([JobStatus.QUEUED, JobStatus.RUNNING]), timeout=60, what="idle")
    store.close()


def with_retries(stack: OrchestrionConfig, retries: int) -> None:
    """Run the scheduler with ``job_fault_retries`` set (the other services are unchanged)."""
    stop_service(stack, "scheduler")
    up(stack.model_copy(update={"job_fault_retries": retries}))


def running_with_data(job: TableJob, data_dir: Path) -> Job:
    """The job once its run is open and its file has been created."""

    def ready() -> Job | None:
        row = job.refresh()
        if row.status is JobStatus.RUNNING and row.run_uids and row.hdf5 and Path(row.hdf5).is_file():
            return row
        return None

    return wait_until(ready, timeout=120, what=f"job {job.id} running with its file")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def history(stack: OrchestrionConfig) -> list[dict[str, Any]]:
    api = queue_server_api(stack)
    try:
        return list(api.history_get(reload=True)["items"])
    finally:
        close_api(api)


def queue_items(stack: OrchestrionConfig) -> list[dict[str, Any]]:
    api = queue_server_api(stack)
    try:
        return list(api.queue_get(reload=True)["items"])
    finally:
        close_api(api)


def catalogued_runs(stack: OrchestrionConfig, job_id: int) -> list[str]:
    catalog = from_uri(tiled_uri(stack), api_key=tiled_api_key(stack))
    try:
        return list(catalog.search(Key("start.job_id") == job_id))
    finally:
        catalog.context.close()


def check_account(stack: OrchestrionConfig, job: Job) -> None:
    """Job table, history, files and catalog tell the same story of ``job``, attempt by attempt."""

    def every_attempt_in_the_history() -> dict[str, dict[str, Any]] | None:
        # The executor records its jobs itself: the queue server's history may follow later
        # (after a fault its manager files the executor item once it is replaced).
        found = {h["item_uid"]: h for h in history(stack)}
        return found if all(a.item_uid in found for a in job.attempts) else None

    items = wait_until(every_attempt_in_the_history, timeout=90, what=f"job {job.id}'s items in the history")
    assert job.attempts, job
    assert job.status is job.attempts[-1].status, "the final status is the final attempt's"
    recorded_runs: list[str] = []
    for number, attempt in enumerate(job.attempts, 1):
        item = items[attempt.item_uid]  # every attempt is an item in the history
        if item["name"] == EXECUTOR_PLAN:
            # An executor item runs jobs back to back (ADR 0310): the attempt its end cut
            # short ends as the item did; every run the item reported is a job's.
            if attempt.status is JobStatus.FAILED:
                assert item["result"]["exit_status"] == attempt.exit_status, (number, attempt)
            reported = set(item["result"]["run_uids"])  # none when its worker died
            assert not reported or set(attempt.run_uids) <= reported, (number, attempt)
        else:
            assert item["result"]["exit_status"] == attempt.exit_status, (number, attempt)
            assert (item["kwargs"]["md"]["job_id"]) == job.id
        assert attempt.run_uids, f"attempt {number} opened a run"
        for run_uid, path in zip(attempt.run_uids, attempt.hdf5, strict=True):
            assert run_uid[:8] in Path(path).name
            # A run whose catalog entry was pending is written again by the bus (its file
            # replaced): wait for it rather than catch it in between.
            wait_until(lambda path=path: Path(path).is_file(), timeout=60, what=f"attempt {number}: its file {path}")
        recorded_runs += attempt.run_uids
    assert job.run_uids == recorded_runs, "no run is dropped, none counted twice"
    own_items = [h for h in items.values() if h.get("kwargs", {}).get("md", {}).get("job_id") == job.id]
    executors = {a.item_uid for a in job.attempts if items[a.item_uid]["name"] == EXECUTOR_PLAN}
    assert len(own_items) + len(executors) == len(job.attempts), "each attempt ran in an item of its own"
    # Every run the catalog has for this job is one of its attempts' runs.
    assert set(catalogued_runs(stack, job.id)) <= set(recorded_runs)
    assert all(i.get("kwargs", {}).get("md", {}).get("job_id") != job.id for i in queue_items(stack)), (
        "no copy left queued"
    )
    if job.status is JobStatus.DONE:
        assert job.points == LONG_POINTS
        # The table names a catalog node only for a run the catalog has (Tiled may have
        # died under it).
        assert (job.tiled is not None) == (job.run_uid in catalogued_runs(stack, job.id)), job


def next_job_runs(client: TableClient) -> None:
    job = client.submit("spectroscopy", **SHORT).wait(timeout=180)
    assert job.status is JobStatus.DONE, job
    assert job.points == 3
    assert len(job.attempts) == 1


def test_a_killed_worker_is_noticed_its_job_failed_and_the_queue_goes_on(
    stack: OrchestrionConfig, client: TableClient
) -> None:
    job = client.submit("spectroscopy", **LONG)
    waiting = client.submit("spectroscopy", **SHORT)
    running_with_data(job, stack.data_dir)
    worker = read_worker_state(stack)
    assert worker is not None
    os.kill(int(worker["pid"]), signal.SIGKILL)
    row = job.wait(timeout=30)  # noticed within seconds, not minutes
    assert row.status is JobStatus.FAILED
    assert f"worker (pid {worker['pid']}) died (killed by SIGKILL)" in (row.error or "")
    check_account(stack, row)
    assert waiting.wait(timeout=120).status is JobStatus.DONE  # the queue went on by itself
    next_job_runs(client)


def test_a_job_whose_catalog_entry_waits_for_tiled_stays_writing_past_its_workers_death_then_ends_done(
    stack: OrchestrionConfig, client: TableClient
) -> None:
    stop_service(stack, "tiled")
    try:
        job = client.submit("spectroscopy", **LONG)

        def waiting_for_tiled() -> Job | None:
            row = job.refresh()
            return row if row.status is JobStatus.WRITING and "waits for Tiled" in (row.error or "") else None

        # Its file is written, its catalog entry waits: the job says so and waits too.
        row = wait_until(waiting_for_tiled, timeout=180, what=f"job {job.id} writing, waiting for Tiled")
        assert row.points == LONG_POINTS
        # The worker that ran it dies meanwhile: nobody in it is left to confirm the job.
        worker = read_worker_state(stack)
        assert worker is not None
        os.kill(int(worker["pid"]), signal.SIGKILL)
        wait_until(lambda: (w := read_worker_state(stack)) is not None and w["pid"] != worker["pid"], timeout=120,
                   what="a new worker")  # fmt: skip
        assert job.refresh().status is JobStatus.WRITING
    finally:
        up(stack)  # Tiled again: the bus workers complete the run's catalog entry
    row = job.wait(timeout=120)
    assert row.status is JobStatus.DONE, row
    assert row.error is None
    assert row.tiled
    assert catalogued_runs(stack, job.id) == row.run_uids
    check_account(stack, row)
    next_job_runs(client)


def test_status_says_when_the_worker_is_dead(stack: OrchestrionConfig, client: TableClient) -> None:
    stop_service(stack, "scheduler")  # nobody recovers meanwhile: what does `status` say?
    try:
        worker = read_worker_state(stack)
        assert worker is not None
        os.kill(int(worker["pid"]), signal.SIGKILL)
        queue_server = wait_until(
            lambda: (s := {row.name: row for row in status(stack)}["queue-server"]).health == "degraded" and s,
            timeout=10, what="the dead worker in the status",
        )  # fmt: skip
        assert f"its worker (pid {worker['pid']}) died (killed by SIGKILL)" in queue_server.detail
    finally:
        up(stack)  # the scheduler destroys the dead environment and opens a new one
    wait_until(lambda: read_worker_state(stack)["pid"] != worker["pid"], timeout=60, what="a new worker")  # type: ignore[index]
    next_job_runs(client)


def test_a_job_cut_short_runs_again_when_the_configuration_says_so(
    stack: OrchestrionConfig, client: TableClient
) -> None:
    with_retries(stack, 1)
    try:
        job = client.submit("spectroscopy", **LONG)
        first = running_with_data(job, stack.data_dir)
        os.kill(int(read_worker_state(stack)["pid"]), signal.SIGKILL)  # type: ignore[index]
        row = job.wait(timeout=180)
        assert row.status is JobStatus.DONE
        assert [a.status for a in row.attempts] == [JobStatus.FAILED, JobStatus.DONE]
        assert row.attempts[0].run_uids == first.run_uids
        assert row.attempts[1].points == LONG_POINTS
        check_account(stack, row)
    finally:
        with_retries(stack, 0)
    next_job_runs(client)


def test_down_force_during_a_job_records_it_and_up_does_not_run_it_twice(
    stack: OrchestrionConfig, client: TableClient
) -> None:
    # Longer than `down --force` can take on a loaded machine (it stops the services in
    # waves before the worker): a full run once saw the 1,500-point job finish, rightly
    # recorded done, before the worker was stopped.  The job is killed; its length costs nothing.
    job = client.submit("spectroscopy", scan=["spectroscopy.detuning=-1e5:1e5:50000"], shots=20)
    running_with_data(job, stack.data_dir)
    down(stack, force=True)
    up(stack)
    row = job.wait(timeout=60)
    assert row.status is JobStatus.FAILED
    assert "down --force" in (row.error or "")
    assert len(row.attempts) == 1
    check_account(stack, row)
    next_job_runs(client)


@pytest.mark.parametrize("name", ["scheduler", "tiled", "redis", "queue-server"])
def test_a_killed_service_is_restarted_and_the_job_table_stays_true(
    stack: OrchestrionConfig, client: TableClient, name: str
) -> None:
    job = client.submit("spectroscopy", **LONG)
    running_with_data(job, stack.data_dir)
    pid = service(name).pid(stack)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (p := service(name).pid(stack)) is not None and p != pid, timeout=60, what=f"{name} restarted")
    wait_until(lambda: service(name).status(stack).health == "ok", timeout=120, what=f"{name} healthy again")
    row = job.wait(timeout=180)
    check_account(stack, row)
    next_job_runs(client)


def test_a_killed_manager_is_replaced_by_the_watchdog_and_the_job_table_stays_true(
    stack: OrchestrionConfig, client: TableClient
) -> None:
    job = client.submit("spectroscopy", **LONG)
    running_with_data(job, stack.data_dir)
    watchdog = service("queue-server").pid(stack)
    worker = read_worker_state(stack)
    assert watchdog is not None
    assert worker is not None
    (manager,) = [p for p in children(watchdog) if p != worker["pid"]]
    os.kill(manager, signal.SIGKILL)
    row = job.wait(timeout=180)
    check_account(stack, row)
    next_job_runs(client)


@pytest.mark.stack
def test_up_with_influxdb_unreachable_says_why_as_soon_as_the_worker_knows(tmp_path: Path) -> None:
    influx_port = free_port()  # nothing listens there
    config = stack_config(tmp_path / "home", influx_url=f"http://127.0.0.1:{influx_port}", influx_timeout=1.0)
    try:
        # The worker's own reason, not a timeout of waiting for an environment that never opens.
        with pytest.raises(ServiceError, match=rf"InfluxDB at http://127\.0\.0\.1:{influx_port} is unreachable"):
            up(config)
        assert {s.health for s in status(config)} == {"down"}
    finally:
        down(config, force=True)
