"""The stack for real: Redis, the queue server, Tiled and the scheduler on free loopback ports.

One stack serves the module (it takes ~15 s to start); every test leaves the queue empty
and the manager idle, so the tests stay independent.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bluesky_queueserver_api import BPlan
from bluesky_queueserver_api.zmq import REManagerAPI
from click.testing import CliRunner

from orchestrion.cli import cli
from orchestrion.client import Client, JobHandle
from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.errors import InputError
from orchestrion.experiment import RunLimits
from orchestrion.jobs import JobRequest, JobStatus, JobStore
from orchestrion.schema import EXECUTOR_PLAN
from orchestrion.services import (
    ServiceError,
    close_api,
    down,
    queue_server_api,
    run_dir,
    status,
    stop_service,
    tiled_api_key,
    up,
    zmq_control_address,
    zmq_info_address,
)

from .support import running_stack, wait_until

# About 300 points: long enough to be caught running and paused, short enough to finish.
LONG = {"scan": ["spectroscopy.detuning=-1e5:1e5:300"], "shots": 20}
SHORT = {"scan": ["spectroscopy.detuning=-1e5:1e5:3"], "shots": 5}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrchestrionConfig]:
    with running_stack(tmp_path_factory.mktemp("stack") / "home") as config:
        yield config


@pytest.fixture
def api(stack: OrchestrionConfig) -> Iterator[Any]:
    client = REManagerAPI(zmq_control_addr=zmq_control_address(stack), zmq_info_addr=zmq_info_address(stack))
    yield client
    close_api(client)


@pytest.fixture
def store(stack: OrchestrionConfig) -> Iterator[JobStore]:
    """The job table, read in place (the client sees it only through the API server)."""
    opened = JobStore.open(stack)
    yield opened
    opened.close()


@pytest.fixture
def client(stack: OrchestrionConfig, api: Any, store: JobStore) -> Iterator[Client]:
    with Client.local(stack) as opened:
        yield opened
        settle(opened, api, store)


def settle(client: Client, api: Any, store: JobStore) -> None:
    """Leave the queue empty, the manager idle and every job finished."""
    if api.status(reload=True)["manager_state"] == "paused":
        api.re_abort()
    for job in store.list([JobStatus.QUEUED, JobStatus.SUBMITTED]):
        with contextlib.suppress(InputError):  # it may have finished meanwhile
            client.cancel(job.id)
    wait_until(lambda: api.status(reload=True)["manager_state"] == "idle", timeout=60, what="an idle manager")
    wait_until(lambda: not store.list([JobStatus.QUEUED, JobStatus.RUNNING]), timeout=30, what="jobs settled")
    wait_until(lambda: api.status(reload=True)["items_in_queue"] == 0, timeout=30, what="an empty queue")


def wait_status(job: JobHandle, *statuses: JobStatus, timeout: float = 60.0) -> Any:
    return wait_until(
        lambda: (row := job.refresh())["status"] in statuses and row, timeout=timeout, what=f"job {job.id} {statuses}"
    )


def pause_running(client: Client, api: Any, job: JobHandle) -> None:
    wait_status(job, JobStatus.RUNNING)
    client.pause()
    wait_until(lambda: api.status(reload=True)["manager_state"] == "paused", timeout=30, what="a paused manager")


def queued_uids(api: Any) -> list[str]:
    return [item["item_uid"] for item in api.queue_get(reload=True)["items"]]


def listening_addresses(ports: set[int]) -> set[str]:
    """Local addresses of the TCP sockets listening on ``ports`` (from /proc/net/tcp{,6})."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and int(port, 16) in ports:  # 0A: LISTEN
                found.add(address)
    return found


def test_up_is_idempotent_and_every_service_listens_on_loopback_only(stack: OrchestrionConfig) -> None:
    before = {s.name: s for s in status(stack)}
    again = {s.name: s for s in up(stack)}
    workers = {"post-processing-1", "post-processing-2"}  # post_processing_workers: 2 by default
    assert set(before) == {"redis", "tiled", "queue-server", "scheduler", "api", "keeper", *workers}
    assert {name: s.pid for name, s in again.items()} == {name: s.pid for name, s in before.items()}
    assert all(s.health == "ok" for s in again.values()), again
    ports = {stack.redis_port, stack.zmq_control_port, stack.zmq_info_port, stack.tiled_port, stack.api_port}
    assert listening_addresses(ports) == {"0100007F"}  # 127.0.0.1, and nothing else

    key = tiled_api_key(stack)
    assert key
    for log in run_dir(stack).glob("*.log"):  # the secret is in no log and no command line
        assert key not in log.read_text(errors="replace"), log
    for service_status in again.values():
        assert key not in Path(f"/proc/{service_status.pid}/cmdline").read_bytes().decode(errors="replace")

    result = CliRunner().invoke(cli, ["status", "--json"], obj={"config": stack})
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    names = ["redis", "tiled", *sorted(workers), "queue-server", "scheduler", "api", "keeper"]
    assert [row["name"] for row in rows] == names
    assert all(row["pid"] and row["health"] == "ok" for row in rows)
    assert rows[names.index("queue-server")]["address"] == f"tcp://127.0.0.1:{stack.zmq_control_port}"


def test_submit_wait_reports_the_run_its_file_and_its_catalog_node(stack: OrchestrionConfig, client: Client) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli, ["submit", "spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:4", "--shots", "5",
              "--set", "qubit.amplitude=0.4", "--wait", "--json"],
        obj={"config": stack},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    submitted = json.loads(result.output)
    assert submitted["status"] == "done"
    assert submitted["arguments"]["parameters"] == {"qubit.amplitude": 0.4}
    shown = runner.invoke(cli, ["job", str(submitted["id"]), "--json"], obj={"config": stack})
    job = json.loads(shown.output)
    assert job["points"] == 4
    assert job["run_uid"] is not None
    assert Path(job["hdf5"]).is_file()
    assert job["run_uid"] in job["tiled"]
    assert job["tiled"].startswith(f"http://127.0.0.1:{stack.tiled_port}/")  # through the stack's server
    assert job["code_commit"]
    listing = json.loads(runner.invoke(cli, ["jobs", "--status", "done", "--json"], obj={"config": stack}).output)
    assert submitted["id"] in [row["id"] for row in listing]
    run = client.job(job["id"]).data()
    assert run.metadata["start"]["uid"] == job["run_uid"]
    assert run.metadata["start"]["job_id"] == job["id"]


def test_a_plain_queue_server_client_runs_the_same_plans(client: Client, api: Any, store: JobStore) -> None:
    response = api.item_add(BPlan("rabi_flop", scan=["rabi_flop.duration=0:2e-5:3"], shots=5))
    uid = response["item"]["item_uid"]

    def finished() -> dict[str, Any] | None:
        return next((h for h in api.history_get(reload=True)["items"] if h["item_uid"] == uid), None)

    item = wait_until(finished, timeout=60, what="the item in the history")
    assert item["result"]["exit_status"] == "completed"
    adopted = wait_until(lambda: store.by_item_uids([uid]).get(uid), timeout=30, what="the adopted job")
    adopted = wait_until(lambda: (j := store.get(adopted.id)).status.terminal and j, what="its end")
    assert (adopted.source, adopted.status, adopted.experiment) == ("queueserver", JobStatus.DONE, "rabi_flop")
    assert adopted.run_uids == item["result"]["run_uids"]


def test_the_qserver_command_line_client_works_too(stack: OrchestrionConfig, client: Client, store: JobStore) -> None:
    before = {j.id for j in store.list()}
    plan = json.dumps({"name": "ramsey", "kwargs": {"scan": ["ramsey.wait=0:1e-5:3"], "shots": 5}})
    result = subprocess.run(
        [str(Path(sys.executable).parent / "qserver"), "-a", zmq_control_address(stack), "queue", "add", "plan", plan],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    def adopted_ramsey() -> Any:
        return next((j for j in store.list() if j.id not in before and j.status.terminal), None)

    job = wait_until(adopted_ramsey, timeout=60, what="the qserver item run and adopted")
    assert (job.experiment, job.status, job.source) == ("ramsey", JobStatus.DONE, "queueserver")


def executor_items(api: Any) -> list[str]:
    return [item["item_uid"] for item in api.queue_get(reload=True)["items"] if item["name"] == EXECUTOR_PLAN]


def test_a_higher_priority_overtakes_queued_jobs_but_not_the_running_one(
    client: Client, api: Any, store: JobStore
) -> None:
    running = client.submit("spectroscopy", **LONG)
    pause_running(client, api, running)
    low_a = client.submit("spectroscopy", **SHORT)
    low_b = client.submit("spectroscopy", **SHORT)
    high = client.submit("spectroscopy", priority=5, **SHORT)  # submitted while one runs: it runs next
    # The jobs wait in the table; the running executor takes them (no plain item waits,
    # so no other executor item is queued).
    assert queued_uids(api) == []
    assert [j.id for j in sorted(store.list(JobStatus.QUEUED), key=lambda j: (-j.priority, j.created))] == [
        high.id, low_a.id, low_b.id,
    ]  # fmt: skip
    wait_status(running, JobStatus.PAUSED, timeout=10)  # never interrupted by the newcomer: paused, not done
    client.resume()
    jobs = [job.wait(timeout=120) for job in (running, high, low_a, low_b)]
    assert [j["status"] for j in jobs] == [JobStatus.DONE] * 4
    starts = [j["started"] for j in jobs]
    assert starts == sorted(starts), "ran in priority order, ties by submission time"
    assert jobs[0]["finished"] is not None
    assert jobs[0]["finished"] <= starts[1]
    # Back to back in the one executor item that ran the first: no queue-server tick between.
    items = {store.get(j["id"]).attempts[-1].item_uid for j in jobs}
    assert len(items) == 1


def test_jobs_run_back_to_back_each_its_own_run_file_and_catalog_entry(
    client: Client, api: Any, store: JobStore
) -> None:
    jobs = [client.submit("spectroscopy", **SHORT) for _ in range(4)]
    rows = [job.wait(timeout=120) for job in jobs]
    assert [r["status"] for r in rows] == [JobStatus.DONE] * 4
    assert len({r["run_uid"] for r in rows}) == 4
    catalog = client.catalog()
    for row in rows:
        assert row["points"] == 3
        assert Path(row["hdf5"]).is_file()
        assert row["run_uid"] in row["tiled"]
        start = catalog[row["run_uid"]].metadata["start"]
        assert start["job_id"] == row["id"]  # its own start document
        assert start["uid"] == row["run_uid"]
    # The executor items that ran them are in the queue server's history with their runs.
    history = {h["item_uid"]: h for h in api.history_get(reload=True)["items"]}
    for row in rows:
        attempt = store.get(row["id"]).attempts[-1]
        item = history[attempt.item_uid]
        assert item["name"] == EXECUTOR_PLAN
        assert row["run_uid"] in item["result"]["run_uids"]
    assert len({store.get(r["id"]).attempts[-1].item_uid for r in rows}) < 4, "several jobs in one item"


def test_a_plain_item_between_orchestrion_jobs_runs_as_itself_in_its_place(
    client: Client, api: Any, store: JobStore
) -> None:
    running = client.submit("spectroscopy", **LONG)
    pause_running(client, api, running)
    before = client.submit("spectroscopy", **SHORT)
    plain = api.item_add(BPlan("rabi_flop", scan=["rabi_flop.duration=0:2e-5:3"], shots=5))["item"]["item_uid"]
    after = client.submit("spectroscopy", **SHORT)
    urgent = client.submit("spectroscopy", priority=2, **SHORT)  # before the plain item (priority 0)
    # The plain item waits in its own item, and one executor item for the jobs around it.
    wait_until(lambda: len(executor_items(api)) == 1 and set(queued_uids(api)) == {plain, *executor_items(api)},
               timeout=10, what="the plain item and one executor item")  # fmt: skip
    client.resume()
    rows = [job.wait(timeout=120) for job in (running, urgent, before, after)]
    adopted = wait_until(lambda: (j := store.by_item_uids([plain]).get(plain)) and j.status.terminal and j)
    assert [r["status"] for r in rows] == [JobStatus.DONE] * 4
    assert (adopted.status, adopted.source) == (JobStatus.DONE, "queueserver")
    order = sorted([*rows, adopted.to_dict()], key=lambda r: r["started"])
    assert [r["id"] for r in order] == [running.id, urgent.id, before.id, adopted.id, after.id]
    history = {h["item_uid"]: h for h in api.history_get(reload=True)["items"]}
    assert history[plain]["name"] == "rabi_flop"  # it ran as itself, in its own item
    assert history[plain]["result"]["run_uids"] == adopted.run_uids


def test_priorities_hold_against_plain_items_the_job_table_does_not_know_yet(
    stack: OrchestrionConfig, client: Client, api: Any, store: JobStore
) -> None:
    # Without the scheduler nobody adopts the plain item: only the queue server knows it.
    stop_service(stack, "scheduler")
    api.queue_autostart(False)
    try:
        plain = api.item_add(BPlan("spectroscopy", **SHORT))["item"]["item_uid"]
        low = client.submit("spectroscopy", **SHORT)  # behind it (plain items count as 0)
        high = client.submit("spectroscopy", priority=3, **SHORT)  # before everything waiting
        high_b = client.submit("spectroscopy", priority=3, **SHORT)  # behind its equal, before the plain item
        lowest = client.submit("spectroscopy", priority=-1, **SHORT)
        low_b = client.submit("spectroscopy", **SHORT)  # before the lower one
        # The executor item goes before the plain item: the next job (priority 3) outranks it.
        assert queued_uids(api) == [*executor_items(api), plain]
        assert len(executor_items(api)) == 1
    finally:
        up(stack)  # the scheduler again: it adopts the plain item and turns autostart back on
    rows = [job.wait(timeout=120) for job in (high, high_b, low, low_b, lowest)]
    adopted = wait_until(lambda: (j := store.by_item_uids([plain]).get(plain)) and j.status.terminal and j)
    order = sorted([*rows, adopted.to_dict()], key=lambda r: r["started"])
    assert [r["id"] for r in order] == [high.id, high_b.id, adopted.id, low.id, low_b.id, lowest.id]


def test_cancel_removes_a_queued_job_and_aborts_a_running_one(
    stack: OrchestrionConfig, client: Client, api: Any, store: JobStore
) -> None:
    running = client.submit("spectroscopy", **LONG)
    pause_running(client, api, running)
    queued = client.submit("spectroscopy", **SHORT)
    with pytest.raises(ServiceError, match="a job is paused"):
        down(stack)  # `down` does not kill a job unasked

    result = CliRunner().invoke(cli, ["cancel", str(queued.id), "--json"], obj={"config": stack})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "cancelled"
    assert queued_uids(api) == []

    # A plain item's job removed by a plain queue-server client: the table follows.
    plain = api.item_add(BPlan("spectroscopy", **SHORT))["item"]["item_uid"]
    adopted = wait_until(lambda: store.by_item_uids([plain]).get(plain), timeout=30, what="the plain item adopted")
    api.item_remove(uid=plain)
    row = wait_until(lambda: (j := store.get(adopted.id)).status is JobStatus.CANCELLED and j, timeout=30)
    assert "outside Orchestrion" in (row.error or "")

    row = client.cancel(running.id)
    row = running.wait(timeout=60)
    assert row["status"] == JobStatus.CANCELLED
    assert "aborted" in (row["error"] or "")
    # The queue server pushed the aborted item back to its queue: the scheduler removes
    # it, and the queue goes on with the next job.
    after = client.submit("spectroscopy", **SHORT)
    assert after.wait(timeout=60)["status"] == JobStatus.DONE
    assert queued.status == JobStatus.CANCELLED
    assert queued.refresh()["started"] is None
    with pytest.raises(InputError, match="already cancelled"):
        client.cancel(queued.id)


def test_a_failed_job_is_recorded_failed_and_the_next_job_runs(client: Client, api: Any, store: JobStore) -> None:
    # Orchestrion refuses a bad scan at submission; a plain client's item reaches the
    # worker and fails there, as a plan failing on the hardware would.
    response = api.item_add(BPlan("spectroscopy", scan=["nothing.here=1:2:3"]))
    uid = response["item"]["item_uid"]
    after = client.submit("spectroscopy", **SHORT)
    assert after.wait(timeout=60)["status"] == JobStatus.DONE
    failed = wait_until(lambda: (j := store.by_item_uids([uid]).get(uid)) and j.status.terminal and j)
    assert failed.status is JobStatus.FAILED
    assert "nothing.here" in (failed.error or "")
    assert failed.finished is not None
    assert failed.finished <= after.refresh()["started"]


def test_an_item_removed_as_the_queue_starts_it_does_not_hold_the_queue(
    client: Client, api: Any, store: JobStore
) -> None:
    # bluesky-queueserver 0.0.25: an item that leaves the queue while the manager starts
    # it (a clear, a cancel or a plain `item_remove` racing the autostart) leaves the
    # manager 'starting_queue' for good; nothing ran, and nothing would run again.  Adding
    # and clearing at once loses that race almost every time; the scheduler restarts it.
    for _ in range(2):
        wait_until(lambda: api.status(reload=True)["manager_state"] == "idle", timeout=60, what="an idle manager")
        api.item_add(BPlan("spectroscopy", **SHORT))
        api.queue_clear()
        wait_until(
            lambda: api.status(reload=True)["manager_state"] == "idle" and api.status()["items_in_queue"] == 0,
            timeout=60, what="the manager idle again after the clear",
        )  # fmt: skip
    assert client.submit("spectroscopy", **SHORT).wait(timeout=60)["status"] == JobStatus.DONE


def test_a_group_without_permission_is_refused_and_nothing_is_queued(stack: OrchestrionConfig, api: Any) -> None:
    # The API server submits as its roles' groups; the queue server's own check is the
    # submission code's, exercised here with the groups it knows.
    from orchestrion.jobs import submit_job, validate_request
    from orchestrion.lab import load_library_and_devices

    store = JobStore.open(stack)
    before = [j.id for j in store.list()]
    library, devices = load_library_and_devices(stack)
    for group, experiment, refusal in (
        ("observer", "spectroscopy", "user group 'observer' may not run 'spectroscopy'"),
        ("student", "calibrate_frequency", "may not run 'calibrate_frequency'"),
    ):
        request = JobRequest(experiment=experiment, **(SHORT if experiment == "spectroscopy" else {}))
        kwargs = validate_request(library, devices, request, limits=RunLimits.of(stack))
        with pytest.raises(InputError, match=refusal):
            submit_job(store, api, request, kwargs, submitter="test", user_group=group)
    assert [j.id for j in store.list()] == before
    assert queued_uids(api) == []
    store.close()


def test_the_scheduler_catches_up_after_a_restart(stack: OrchestrionConfig, client: Client, api: Any) -> None:
    stop_service(stack, "scheduler")
    job = client.submit("spectroscopy", **SHORT)
    # The queue server runs its executor item without the scheduler; the worker records the job.
    row = job.wait(timeout=60)
    assert row["status"] == JobStatus.DONE
    up(stack)
    row = job.wait(timeout=30)
    assert row["status"] == JobStatus.DONE
    assert row["run_uid"] is not None
    assert row["started"] is not None


def test_queued_jobs_survive_a_restart_of_the_stack_and_run_in_order(
    stack: OrchestrionConfig, client: Client, api: Any
) -> None:
    stop_service(stack, "scheduler")
    api.queue_autostart(False)  # hold the queue so that the jobs are still queued at `down`
    first = client.submit("spectroscopy", **SHORT)
    second = client.submit("rabi_flop", priority=2, scan=["rabi_flop.duration=0:2e-5:3"], shots=5)
    assert [first.status, second.status] == [JobStatus.QUEUED] * 2
    assert len(queued_uids(api)) == 1  # one executor item will run them
    stopped = down(stack)
    assert {s.health for s in stopped} == {"down"}
    up(stack)
    restarted = queue_server_api(stack)
    try:
        rows = [second.wait(timeout=60), first.wait(timeout=60)]
    finally:
        close_api(restarted)
    assert [r["status"] for r in rows] == [JobStatus.DONE, JobStatus.DONE]
    assert rows[0]["started"] is not None
    assert rows[1]["started"] is not None
    assert rows[0]["started"] < rows[1]["started"]


def test_plain_items_carry_the_same_details_and_choose_no_job_id(client: Client, api: Any, store: JobStore) -> None:
    finished = client.submit("spectroscopy", **SHORT).wait(timeout=60)
    fitted = {"scan": ["spectroscopy.detuning=-1e5:1e5:21"], "shots": 20}  # enough points for its fit
    uids = [
        api.item_add(BPlan("spectroscopy", **fitted, md={"job_id": 999}))["item"]["item_uid"],
        api.item_add(BPlan("spectroscopy", **fitted, md={"job_id": finished["id"]}))["item"]["item_uid"],
    ]

    def adopted() -> list[Any] | None:
        jobs = store.by_item_uids(uids)
        return [jobs[u] for u in uids] if len(jobs) == 2 and all(j.status.terminal for j in jobs.values()) else None

    jobs = wait_until(adopted, timeout=120, what="both plain items run and recorded")
    assert all(j.status is JobStatus.DONE and j.source == "queueserver" for j in jobs), jobs
    assert {j.id for j in jobs}.isdisjoint({999, finished["id"]}), "job ids are the table's alone"
    assert store.find(999) is None
    assert store.get(finished["id"]).status is JobStatus.DONE, "the finished job is untouched"
    for job in jobs:  # the same details as a job from `orchestrion submit`
        assert job.points == 21
        assert job.hdf5 is not None
        assert Path(job.hdf5).is_file()
        assert job.tiled is not None
        assert job.run_uid in job.tiled
        assert "center" in job.analysis
        assert job.code_commit
        assert [a.item_uid for a in job.attempts] == [job.item_uid]
    ran = api.history_get(reload=True)["items"]
    history_uids = {h["item_uid"] for h in ran if h["name"] != EXECUTOR_PLAN}
    assert set(store.by_item_uids(sorted(history_uids))) == history_uids, "every item that ran is a job"
    # Executor items are not jobs: each run they made is one of a job's attempts.
    attempts = {run for j in store.list() for a in j.attempts for run in a.run_uids}
    assert {u for h in ran if h["name"] == EXECUTOR_PLAN for u in h["result"]["run_uids"]} <= attempts


def test_a_run_beyond_the_limits_is_refused_at_submission_and_by_the_worker(
    client: Client, api: Any, store: JobStore
) -> None:
    # Before: submit hung, and a plain client's item grew the worker to 17.7 GB.
    with pytest.raises(InputError, match="above the limit max_run_points"):
        client.submit("spectroscopy", repetitions=10**9)
    uid = api.item_add(BPlan("spectroscopy", repetitions=10**9))["item"]["item_uid"]
    assert client.submit("spectroscopy", **SHORT).wait(timeout=60)["status"] == JobStatus.DONE
    failed = wait_until(lambda: (j := store.by_item_uids([uid]).get(uid)) and j.status.terminal and j)
    assert failed.status is JobStatus.FAILED
    assert "31,000,000,000 points" in (failed.error or "")


def test_the_post_processing_workers_write_the_jobs_runs_from_the_bus(stack: OrchestrionConfig, client: Client) -> None:
    from orchestrion.bus import DONE, BusKeys, read_state
    from orchestrion.bus import connect as connect_bus

    rows = {s.name: s for s in status(stack) if s.name.startswith("post-processing")}
    assert set(rows) == {"post-processing-1", "post-processing-2"}
    assert all(row.pid and row.health == "ok" for row in rows.values()), rows
    job = client.submit("spectroscopy", **SHORT).wait(timeout=120)
    assert job["status"] == JobStatus.DONE
    assert job["run_uid"] is not None
    bus = connect_bus(stack)
    try:
        written = read_state(bus, BusKeys().state(job["run_uid"]))
    finally:
        bus.close()
    # Written by one of the stack's workers from the bus, not by the queue-server worker.
    assert written["status"] == DONE
    assert written["worker"] in rows
    assert written["hdf5"] == job["hdf5"]
    assert Path(written["hdf5"]).is_file()


def test_down_stops_the_keeper_first_and_each_service_after_those_that_require_it() -> None:
    from orchestrion.services._stack import stack_services, start_order, stop_waves

    order = start_order(stack_services(load_config(post_processing_workers=2)))
    waves = [[svc.name for svc in wave] for wave in stop_waves(order)]
    assert waves[0] == ["keeper"]  # alone: it would restart what the others stop
    stopped: set[str] = set()
    for wave in waves:
        for svc in (s for s in order if s.name in wave):
            dependents = {other.name for other in order if svc.name in other.requires}
            assert dependents <= stopped, f"{svc.name} stops beside or before {dependents - stopped}"
        stopped.update(wave)
    assert stopped == {svc.name for svc in order}
    assert any(len(wave) > 1 for wave in waves)  # the two workers side by side, at least
