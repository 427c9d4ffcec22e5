"""The job table, submission checks and the worker's startup code, without services running."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig
from orchestrion.errors import InputError, OrchestrionError
from orchestrion.experiment import RunLimits
from orchestrion.jobs import (
    MIGRATIONS,
    SCHEMA_VERSION,
    JobRequest,
    JobStatus,
    JobStore,
    NewJob,
    UnknownJobError,
    check_parameter_store,
    insert_position,
    latest_parameter_timestamp,
    make_executor,
    submit_job,
    validate_request,
)
from orchestrion.lab import load_library_and_devices
from orchestrion.pipeline._offload import MAX_RESUMES  # how often a run is taken over
from orchestrion.schema import EXECUTOR_PLAN, JOB_ID_KEY
from orchestrion.services import close_api, queue_server_api
from orchestrion.worker import PLANS_AND_DEVICES_FILE, WorkerEnvironment, existing_plans_and_devices

from .support import free_port

PROFILE = Path(__file__).resolve().parents[1] / "profile"


def submit_as_the_api_server_does(config: OrchestrionConfig, timeout: float = 5.0, **fields: Any) -> None:
    """Build, validate and submit a request with the code the API server runs."""
    library, devices = load_library_and_devices(config)
    request = JobRequest.build(**fields)
    check_parameter_store(config)
    kwargs = validate_request(library, devices, request, limits=RunLimits.of(config))
    store, api = JobStore.open(config), queue_server_api(config, timeout=timeout)
    try:
        submit_job(store, api, request, kwargs, submitter="test", user_group="primary")
    finally:
        close_api(api)
        store.close()


def job_rows(config: OrchestrionConfig) -> list[Any]:
    store = JobStore.open(config)
    try:
        return store.list()
    finally:
        store.close()


def new_job(priority: int = 0, **values: object) -> NewJob:
    fields: dict[str, Any] = {"arguments": {}, **values}
    return NewJob(experiment="spectroscopy", priority=priority, submitter="tester", user_group="primary", **fields)


def test_jobs_round_trip_through_the_table(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.insert(new_job(3, scan=["spectroscopy.detuning=-1:1:3"], shots=10, code_commit="abc"))
    store.update(job_id, status=JobStatus.QUEUED, item_uid="item-1")
    store.add_run_uids(job_id, ["run-a"])
    store.add_run_uids(job_id, ["run-a", "run-b"])
    store.update(job_id, analysis={"center": 1.5, "center_err": 0.1})
    job = store.get(job_id)
    assert (job.status, job.priority, job.item_uid, job.run_uids) == (JobStatus.QUEUED, 3, "item-1", ["run-a", "run-b"])
    assert job.scan == ["spectroscopy.detuning=-1:1:3"]
    assert job.analysis == {"center": 1.5, "center_err": 0.1}
    assert job.to_dict()["run_uid"] == "run-b"
    assert [j.id for j in store.list(JobStatus.QUEUED)] == [job_id]
    assert store.list(JobStatus.DONE) == []
    with pytest.raises(UnknownJobError, match="no job 99"):
        store.get(99)
    store.close()


def test_a_failed_write_leaves_no_row(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")

    def refused_submission() -> None:
        with store.write():
            store.insert(new_job())
            raise RuntimeError("the queue server refused")

    with pytest.raises(RuntimeError):
        refused_submission()
    assert store.list() == []
    store.close()


def test_migrations_upgrade_an_old_table_and_keep_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old = JobStore(path, migrate_to=1)
    assert old.schema_version == 1
    with old.write():
        old._db.execute(
            "INSERT INTO jobs (experiment, submitter, created, status) VALUES ('ramsey', 'ann', 1.0, 'done')"
        )
    old.close()
    store = JobStore(path)
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    job = store.get(1)
    assert (job.experiment, job.status, job.user_group, job.points) == ("ramsey", JobStatus.DONE, "primary", None)
    store.close()


def test_a_table_from_a_newer_orchestrion_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    JobStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(OrchestrionError, match="newer than this Orchestrion knows"):
        JobStore(path)


def test_insert_position_keeps_priority_order_and_submission_order_within_it(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    for priority, uid in ((5, "a"), (5, "b"), (1, "c")):
        store.insert(new_job(priority, item_uid=uid, status=JobStatus.QUEUED))
    items = [{"item_uid": uid} for uid in ("a", "b", "c", "foreign")]
    assert insert_position(store, items, 9) == "a"  # overtakes everything queued
    assert insert_position(store, items, 5) == "c"  # behind its equals, before lower ones
    assert insert_position(store, items, 1) == "foreign"  # plain-client items count as 0
    assert insert_position(store, items, 0) is None  # the back
    store.close()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"experiment": "no_such_experiment"}, "unknown experiment 'no_such_experiment'"),
        ({"experiment": "spectroscopy", "parameters": {"qubit.amplitude": "2"}}, "qubit.amplitude"),
        ({"experiment": "spectroscopy", "scan": ["spectroscopy.detuning=1:2"]}, "spectroscopy.detuning"),
        ({"experiment": "spectroscopy", "scan": ["nothing.here=1:2:3"]}, "nothing.here"),
        ({"experiment": "spectroscopy", "shots": 0}, "shots"),
        ({"experiment": "spectroscopy", "priority": 1.5}, "priority"),
        ({"experiment": "spectroscopy", "md": {JOB_ID_KEY: 3}}, JOB_ID_KEY),
    ],
)
def test_bad_submissions_are_refused_before_anything_is_written(
    config: OrchestrionConfig, request_: dict[str, Any], message: str
) -> None:
    # No services run for this configuration: a refusal must come before any request.
    with pytest.raises(InputError, match=message):
        submit_as_the_api_server_does(config, **request_)
    assert job_rows(config) == []


def test_validation_types_the_values_given_as_text(config: OrchestrionConfig) -> None:
    library, devices = load_library_and_devices(config)
    kwargs = validate_request(
        library,
        devices,
        JobRequest(experiment="spectroscopy", parameters={"qubit.amplitude": "0.25", "rf.frequency": "2e8"}, shots=7),
        limits=RunLimits.of(config),
    )
    assert kwargs["parameters"] == {"qubit.amplitude": 0.25, "rf.frequency": 2e8}
    assert kwargs["shots"] == 7
    assert "scan" not in kwargs


def test_the_checked_in_plan_list_matches_the_library(config: OrchestrionConfig, tmp_path: Path) -> None:
    """`profile/existing_plans_and_devices.yaml` never drifts from plans/ and devices/.

    Regenerate it with `python -m orchestrion.worker` after changing a plan's signature.
    """
    plans, devices = existing_plans_and_devices(config)
    checked_in = yaml.safe_load((PROFILE / PLANS_AND_DEVICES_FILE).read_text())
    # The library's experiments, and the executor that runs Orchestrion's jobs (ADR 0310).
    expected = sorted([*config_library_names(config), EXECUTOR_PLAN])
    assert sorted(checked_in["existing_plans"]) == sorted(plans) == expected
    assert checked_in == yaml.safe_load(yaml.safe_dump({"existing_devices": devices, "existing_plans": plans}))


def config_library_names(config: OrchestrionConfig) -> list[str]:
    from orchestrion.experiment import ExperimentLibrary

    return ExperimentLibrary.load(config.plans_dir).names()


def test_plan_signatures_reach_the_queue_server_as_types(config: OrchestrionConfig) -> None:
    plans, _ = existing_plans_and_devices(config)
    annotations = {p["name"]: p["annotation"]["type"] for p in plans["spectroscopy"]["parameters"]}
    # Evaluated, not the quoted strings of postponed annotations (ADR 0302).
    assert annotations["scan"] == "list[str] | None"
    assert annotations["parameters"] == "dict[str, typing.Any] | None"


def test_permissions_define_the_groups_a_lab_needs() -> None:
    groups = yaml.safe_load((PROFILE / "user_group_permissions.yaml").read_text())["user_groups"]
    assert {"root", "primary", "admin", "observer"} <= set(groups)
    assert groups["observer"]["forbidden_plans"] == [":.*"]
    assert groups["admin"]["allowed_plans"] == [None]
    assert groups["admin"]["forbidden_plans"] == [None]


def test_the_worker_records_each_run_of_a_job(config: OrchestrionConfig) -> None:
    # The recorder reads the pipeline's summary; the catalog is not needed (and slow to start).
    # Local post-processing (no bus: no Redis runs here), without the catalog (slow to start).
    environment = WorkerEnvironment(
        config.model_copy(update={"tiled_enabled": False, "post_processing_workers": 0}), worker=True
    )
    try:
        namespace = environment.namespace()
        assert isinstance(namespace["RE"], RunEngine)
        assert {"sequencer", "rf", "field", "spectroscopy", "calibrate_frequency"} <= set(namespace)
        store = JobStore.open(config)
        job_id = store.insert(new_job())
        plan = namespace["spectroscopy"](scan=["spectroscopy.detuning=-1e5:1e5:21"], shots=50, md={JOB_ID_KEY: job_id})
        environment.RE(plan)
        job = store.get(job_id)
        assert job.points == 21
        assert "center" in job.analysis  # the fit, from the run's analysis stream
        assert len(job.run_uids) == 1
        assert job.parameters_timestamp is not None
        assert job.parameters_timestamp.startswith("20")
        assert job.code_commit == environment.code[0]
        store.close()
    finally:
        environment.close()


@pytest.fixture
def worker(config: OrchestrionConfig) -> Iterator[WorkerEnvironment]:
    """The worker's environment with local post-processing (no bus, no Redis) and no catalog."""
    environment = WorkerEnvironment(
        config.model_copy(update={"tiled_enabled": False, "post_processing_workers": 0}), worker=True
    )
    yield environment
    environment.close()


def executor_of(environment: WorkerEnvironment, item_uid: str = "executor-1") -> Any:
    """The executor plan of the worker's namespace, as the queue server would run item ``item_uid``."""
    namespace = environment.namespace()
    plans = {name: plan for name, plan in namespace.items() if name in config_library_names(environment.config)}
    return make_executor(lambda: JobStore.open(environment.config, durable=False), plans, lambda: item_uid)


def queued_job(store: JobStore, priority: int = 0, points: int = 3, **fields: Any) -> int:
    arguments = {"scan": [f"spectroscopy.detuning=-1e5:1e5:{points}"], "shots": 5, **fields}
    return store.insert(new_job(priority, arguments=arguments, status=JobStatus.QUEUED))


def test_the_executor_runs_queued_jobs_back_to_back_in_priority_order_each_its_own_run(
    worker: WorkerEnvironment, config: OrchestrionConfig
) -> None:
    store = JobStore.open(config)
    low_a, high, low_b = queued_job(store), queued_job(store, priority=5), queued_job(store)
    documents: dict[str, list[Any]] = defaultdict(list)
    worker.RE.subscribe(lambda name, doc: documents[name].append(doc))
    later: list[int] = []

    def submit_meanwhile(name: str, doc: dict[str, Any]) -> None:
        # While the first job runs, a job of higher priority arrives: it runs next.
        if name == "start" and not later:
            later.append(queued_job(store, priority=9))

    worker.RE.subscribe(submit_meanwhile)
    worker.RE(executor_of(worker)())
    assert worker.recorder is not None
    assert worker.recorder.wait_confirmed(timeout=120)
    order = [doc[JOB_ID_KEY] for doc in documents["start"]]
    assert order == [high, later[0], low_a, low_b]
    assert len({doc["uid"] for doc in documents["start"]}) == 4  # each job its own run
    assert [doc["run_start"] for doc in documents["stop"]] == [doc["uid"] for doc in documents["start"]]
    for job_id, start in zip(order, documents["start"], strict=True):
        job = store.get(job_id)
        assert job.status is JobStatus.DONE, job
        assert job.run_uids == [start["uid"]]
        assert job.points == 3
        assert job.hdf5 is not None
        assert Path(job.hdf5).is_file()
        assert [(a.item_uid, a.status) for a in job.attempts] == [("executor-1", JobStatus.DONE)]
    # Its turn over (nothing waits), the executor is retired: a new job needs a new item.
    assert store.retired_executors() == {"executor-1"}
    store.close()


def test_the_executor_leaves_a_plain_item_its_turn_and_records_a_failed_job_and_goes_on(
    worker: WorkerEnvironment, config: OrchestrionConfig
) -> None:
    store = JobStore.open(config)
    bad = queued_job(store, priority=2, parameters={"no.such": 1})  # fails in the worker
    good = queued_job(store, priority=1)
    plain = store.insert(new_job(0, status=JobStatus.QUEUED, item_uid="plain-item"))  # a plain client's item
    after = queued_job(store)  # behind the plain item: same priority, later
    worker.RE(executor_of(worker)())
    assert worker.recorder is not None
    assert worker.recorder.wait_confirmed(timeout=120)
    failed = store.get(bad)
    assert failed.status is JobStatus.FAILED
    assert "no.such" in (failed.error or "")
    assert store.get(good).status is JobStatus.DONE
    assert (store.get(plain).status, store.get(after).status) == (JobStatus.QUEUED, JobStatus.QUEUED)
    store.close()


def test_a_changed_priority_counts_at_the_next_claim_and_a_cancelled_job_is_never_claimed(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    first, second, third = (store.insert(new_job(0, status=JobStatus.QUEUED)) for _ in range(3))
    store.update(third, priority=4)  # what `change_priority` writes
    store.update(first, status=JobStatus.CANCELLED)  # what `cancel_job` writes for a queued job
    store.executor_started("executor-1")
    claimed = [store.claim_next("executor-1"), store.claim_next("executor-1")]
    assert [job.id for job in claimed if job is not None] == [third, second]
    assert store.claim_next("executor-1") is None
    assert store.get(first).status is JobStatus.CANCELLED
    assert store.retired_executors() == {"executor-1"}
    store.close()


def post_processing_helpers() -> list[int]:
    """This process's post-processing helper processes (`orchestrion.pipeline._helper`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and "orchestrion.pipeline._helper" in command:
            found.append(int(entry.name))
    return found


def test_a_job_whose_data_were_not_all_written_ends_incomplete_with_where_its_data_are(
    worker: WorkerEnvironment, config: OrchestrionConfig
) -> None:
    # Before: the recorder took the points and the file of such a run, and the job was
    # reported done (its plan completed): the summary's 'incomplete' was dropped.
    store = JobStore.open(config)
    job_id = queued_job(store, points=300)
    killed: list[int] = []
    assert worker.pipeline is not None
    summaries = worker.pipeline.summaries.runs

    def kill_post_processing(name: str, doc: dict[str, Any]) -> None:
        # Once post-processing has opened the run's file, every helper that takes the run
        # over is killed too, more times than the run is taken over: its data cannot all
        # be written, and the points so far are kept in its file.
        if name != "event" or len(killed) > MAX_RESUMES:
            return
        if any(s.hdf5 and s.measured_points > 20 for s in summaries.values()):
            for pid in post_processing_helpers():
                if pid not in killed:
                    killed.append(pid)
                    os.kill(pid, signal.SIGKILL)

    worker.RE.subscribe(kill_post_processing)
    worker.RE(executor_of(worker)())
    assert worker.recorder is not None
    assert worker.recorder.wait_confirmed(timeout=120)
    job = store.get(job_id)
    assert job.status is JobStatus.INCOMPLETE, job
    assert job.hdf5 is not None
    assert job.hdf5 in (job.error or ""), "the reason says where its data are"
    assert "post-processing" in (job.error or "")
    assert job.attempts[-1].status is JobStatus.INCOMPLETE
    assert killed
    assert job.points is not None
    assert job.points < 300
    store.close()


def test_latest_parameter_timestamp_reads_the_nested_snapshot() -> None:
    start = {
        "uid": "u", "time": 0.0,
        "parameters": {"qubit": {"frequency": {"value": 1.0, "timestamp": "2026-01-02T00:00:00+00:00", "source": "x"},
                                 "pi_time": {"value": 1.0, "timestamp": "2026-03-01T00:00:00+00:00", "source": "x"}}},
    }  # fmt: skip
    assert latest_parameter_timestamp(start) == "2026-03-01T00:00:00+00:00"  # type: ignore[arg-type]


def test_a_submission_without_a_queue_server_fails_clearly_and_leaves_no_row(config: OrchestrionConfig) -> None:
    from orchestrion.jobs import QueueServerError

    unreachable = config.model_copy(update={"zmq_control_port": free_port(), "zmq_info_port": free_port()})
    with pytest.raises(QueueServerError, match="orchestrion up"):
        submit_as_the_api_server_does(
            unreachable, timeout=0.3, experiment="spectroscopy", scan=["spectroscopy.detuning=0:0:1"]
        )
    assert job_rows(unreachable) == []


def test_a_submission_while_influxdb_is_down_is_refused_with_the_reason(config: OrchestrionConfig) -> None:
    from orchestrion.parameters import ParameterStoreUnavailable

    down = config.model_copy(update={"influx_url": f"http://127.0.0.1:{free_port()}", "influx_timeout": 1.0})
    with pytest.raises(ParameterStoreUnavailable, match=r"InfluxDB at http://127\.0\.0\.1:\d+ is unreachable"):
        submit_as_the_api_server_does(
            down, timeout=0.3, experiment="spectroscopy", scan=["spectroscopy.detuning=0:0:1"]
        )
    assert job_rows(down) == []


def test_up_refuses_a_port_that_another_program_holds(config: OrchestrionConfig) -> None:
    import os
    import socket

    from orchestrion.services import ServiceError, status, up

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = config.model_copy(update={"redis_port": holder.getsockname()[1]})
        with pytest.raises(
            ServiceError, match=f"redis cannot start: port {taken.redis_port} is taken by pid {os.getpid()}"
        ):
            up(taken)
    assert {s.health for s in status(taken)} == {"down"}  # nothing left half-started


@pytest.mark.parametrize(
    ("manager", "re", "worker", "running", "stuck"),
    [
        ("executing_queue", "idle", "idle", "uid", "has not moved on from a finished item"),
        ("executing_queue", "running", "executing_plan", "uid", None),
        ("starting_queue", "idle", "idle", None, "did not start the item that left its queue as it started it"),
        ("starting_queue", "idle", "idle", "uid", None),  # it got as far as running it
        ("idle", "idle", "idle", None, None),
        ("paused", "paused", "idle", "uid", None),
    ],
)
def test_a_manager_looks_stuck_only_in_the_states_it_never_leaves(
    manager: str, re: str, worker: str, running: str | None, stuck: str | None
) -> None:
    from orchestrion.jobs._scheduler import manager_stuck

    status = {"manager_state": manager, "re_state": re, "worker_environment_state": worker, "running_item_uid": running}
    found = manager_stuck(status)
    assert (found[0] if found else None) == stuck
