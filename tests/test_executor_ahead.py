"""The next job's start prepared while the current job runs (ADR 0313), on the real stack.

The start document says whether a run was prepared ahead (`prepared_ahead`) and when
its parameters were read (`parameters_read`); the worker's log says which preparation
was made and which was discarded.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from bluesky_queueserver_api.zmq import REManagerAPI

from orchestrion.client import Client, JobHandle
from orchestrion.config import OrchestrionConfig
from orchestrion.jobs import JobStatus, JobStore
from orchestrion.schema import PARAMETERS_READ, PREPARED_AHEAD
from orchestrion.services import close_api, run_dir, zmq_control_address, zmq_info_address

from .support import running_stack, wait_until
from .test_queue import LONG, SHORT, pause_running, settle


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
    opened = JobStore.open(stack)
    yield opened
    opened.close()


@pytest.fixture
def client(stack: OrchestrionConfig, api: Any, store: JobStore) -> Iterator[Client]:
    with Client.local(stack) as opened:
        yield opened
        settle(opened, api, store)


def worker_log(config: OrchestrionConfig) -> str:
    """What the queue server (and its worker) logged."""
    return "\n".join(path.read_text(errors="replace") for path in sorted(run_dir(config).glob("queue-server*.log")))


def logged(config: OrchestrionConfig, text: str) -> bool:
    return text in worker_log(config)


def run_documents(client: Client, job: JobHandle) -> tuple[dict[str, Any], dict[str, Any]]:
    """The start and stop documents of a finished job's run."""
    row = job.wait(timeout=120)
    assert row["status"] == JobStatus.DONE, row
    metadata = client.catalog()[row["run_uid"]].metadata
    return dict(metadata["start"]), dict(metadata["stop"])


def read_time(start: dict[str, Any]) -> float:
    return datetime.fromisoformat(start[PARAMETERS_READ]).timestamp()


def test_the_next_job_is_prepared_while_the_current_one_runs(client: Client) -> None:
    current = client.submit("spectroscopy", **LONG)
    following = client.submit("spectroscopy", **SHORT)
    current_start, current_stop = run_documents(client, current)
    start, _ = run_documents(client, following)
    assert current_start[PREPARED_AHEAD] is False  # nothing ran before it
    assert start[PREPARED_AHEAD] is True
    # Its snapshot was read while the job before it ran, before that run's end.
    assert current_start["time"] < read_time(start) < current_stop["time"]
    assert start["time"] > current_stop["time"]  # and it is still a run of its own, after


def test_a_calibration_before_a_job_changes_what_that_job_reads(stack: OrchestrionConfig, client: Client) -> None:
    calibration = client.submit("calibrate_frequency")
    following = client.submit("spectroscopy", **SHORT)
    calibration_row = calibration.wait(timeout=120)
    written = calibration_row["analysis"]["qubit_frequency"]
    start, _ = run_documents(client, following)
    # The calibration wrote at its end: the next job's run reads the new value, however
    # early it was prepared.
    read = start["parameters"]["qubit"]["frequency"]
    assert read["value"] == pytest.approx(written)
    assert read["source"] == f"calibrate_frequency run {calibration_row['run_uid']}"
    assert logged(stack, f"job {following.id}: preparation discarded (parameters it read changed)") or (
        start[PREPARED_AHEAD] and read_time(start) > datetime.fromisoformat(read["timestamp"]).timestamp()
    )


def test_a_job_of_higher_priority_submitted_meanwhile_runs_next_and_is_prepared_instead(
    stack: OrchestrionConfig, client: Client, api: Any
) -> None:
    current = client.submit("spectroscopy", **LONG)
    low = client.submit("spectroscopy", **SHORT)
    wait_until(lambda: logged(stack, f"job {low.id}: prepared ahead"), timeout=60, what="the next job prepared")
    pause_running(client, api, current)
    high = client.submit("spectroscopy", priority=5, **SHORT)
    client.resume()
    current_start, _ = run_documents(client, current)
    high_start, _ = run_documents(client, high)
    low_start, _ = run_documents(client, low)
    assert current_start["time"] < high_start["time"] < low_start["time"]  # priority order
    # The lower job's preparation, made before the higher one came, was not used: its
    # run read its parameters after the higher job's run had started.
    assert read_time(low_start) > high_start["time"]
    assert logged(stack, f"job {low.id}: preparation discarded")


def test_a_prepared_job_that_is_cancelled_does_not_run(stack: OrchestrionConfig, client: Client, api: Any) -> None:
    current = client.submit("spectroscopy", **LONG)
    cancelled = client.submit("spectroscopy", **SHORT)
    after = client.submit("spectroscopy", **SHORT)
    wait_until(lambda: logged(stack, f"job {cancelled.id}: prepared ahead"), timeout=60, what="the next job prepared")
    client.cancel(cancelled.id)
    current.wait(timeout=120)
    start, _ = run_documents(client, after)
    assert cancelled.refresh()["status"] == JobStatus.CANCELLED
    assert cancelled.refresh()["started"] is None
    assert cancelled.refresh()["run_uids"] == []
    assert start["job_id"] == after.id
    assert logged(stack, f"job {cancelled.id}: preparation discarded")
    assert read_time(start) > read_time(run_documents(client, current)[0])
