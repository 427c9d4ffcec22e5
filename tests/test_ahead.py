"""The next job's start prepared ahead, in one process: when it is used and when it is not (ADR 0313).

The job table is stood in for by the list of what would run next; the lab, its
parameter store and the RunEngine are the real ones.  The whole path through the queue
server is in test_executor_ahead.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from bluesky import RunEngine

from orchestrion.experiment import AheadPreparer, NextRun, activate_starts, plan_request
from orchestrion.lab import Lab
from orchestrion.schema import JOB_ID_KEY, PARAMETERS_AT, PARAMETERS_READ, PREPARED_AHEAD

from .support import wait_until

SHORT = {"scan": ["spectroscopy.detuning=-1e5:1e5:12"], "shots": 5}  # prepared after 8 points and 11


class Upcoming:
    """What the job table would give next: set by the test."""

    def __init__(self) -> None:
        self.next: NextRun | None = None

    def __call__(self) -> NextRun | None:
        return self.next


@pytest.fixture
def upcoming() -> Upcoming:
    return Upcoming()


@pytest.fixture
def preparer(lab: Lab, upcoming: Upcoming) -> Iterator[AheadPreparer]:
    made = AheadPreparer(lab, upcoming)
    activate_starts(made)
    yield made
    activate_starts(None)
    made.close()


def job_kwargs(job_id: int, **arguments: Any) -> dict[str, Any]:
    md = {JOB_ID_KEY: job_id, PARAMETERS_AT: datetime.now(UTC).isoformat()}
    return {**SHORT, **arguments, "md": md}


def next_run(lab: Lab, job_id: int, kwargs: dict[str, Any]) -> NextRun:
    experiment = lab.library.experiment("spectroscopy")
    return NextRun(job_id, experiment, plan_request(experiment, **kwargs))


def run(lab: Lab, RE: RunEngine, docs: dict[str, list[Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    before = len(docs["start"])
    RE(lab.library.entry("spectroscopy").plan(**kwargs))
    (start,) = docs["start"][before:]
    return dict(start)


def first_job_with_second_prepared(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]], preparer: AheadPreparer, upcoming: Upcoming
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Job 1 run with job 2 waiting behind it, until job 2 is prepared: (job 1's start, job 2's arguments)."""
    second = job_kwargs(2)
    upcoming.next = next_run(lab, 2, second)
    first = run(lab, RE, docs, job_kwargs(1))
    wait_until(lambda: preparer.prepared() == 2, what="job 2 prepared")
    return first, second


def test_the_next_jobs_start_is_used_when_nothing_changed(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]], preparer: AheadPreparer, upcoming: Upcoming
) -> None:
    first, second = first_job_with_second_prepared(lab, RE, docs, preparer, upcoming)
    stopped = docs["stop"][-1]["time"]
    upcoming.next = None  # job 2 is claimed: nothing waits behind it
    start = run(lab, RE, docs, second)
    assert first[PREPARED_AHEAD] is False
    assert start[PREPARED_AHEAD] is True
    assert datetime.fromisoformat(start[PARAMETERS_READ]).timestamp() < stopped
    assert docs["stop"][-1]["exit_status"] == "success"
    assert preparer.prepared() is None  # taken once


def test_a_parameter_written_after_the_preparation_is_read_at_the_start(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]], preparer: AheadPreparer, upcoming: Upcoming
) -> None:
    _, second = first_job_with_second_prepared(lab, RE, docs, preparer, upcoming)
    upcoming.next = None
    written = lab.parameters.set("qubit.frequency", 12.6429e9, source="a calibration")  # as a calibration's end does
    start = run(lab, RE, docs, second)
    assert start[PREPARED_AHEAD] is False
    assert start["parameters"]["qubit"]["frequency"]["value"] == written.value
    assert start["parameters"]["qubit"]["frequency"]["source"] == "a calibration"


def test_a_write_of_a_parameter_the_job_does_not_read_leaves_the_preparation_usable(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]], preparer: AheadPreparer, upcoming: Upcoming
) -> None:
    _, second = first_job_with_second_prepared(lab, RE, docs, preparer, upcoming)
    rabi = lab.library.experiment("rabi_flop")
    unread = next(p for p in rabi.parameter_ids if p.startswith("rabi_flop."))
    spec = lab.parameters.specs()[unread]
    lab.parameters.set(unread, spec.default, source="elsewhere")  # the mark changes, the snapshot does not
    upcoming.next = None
    assert run(lab, RE, docs, second)[PREPARED_AHEAD] is True


def test_another_job_claimed_or_another_request_discards_the_preparation(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]], preparer: AheadPreparer, upcoming: Upcoming
) -> None:
    upcoming.next = next_run(lab, 2, job_kwargs(2))
    run(lab, RE, docs, job_kwargs(1))
    wait_until(lambda: preparer.prepared() == 2, what="job 2 prepared")
    upcoming.next = None
    assert run(lab, RE, docs, job_kwargs(3))[PREPARED_AHEAD] is False  # job 3 came first
    assert preparer.prepared() is None

    second = job_kwargs(2)
    upcoming.next = next_run(lab, 2, second)
    run(lab, RE, docs, job_kwargs(4))
    wait_until(lambda: preparer.prepared() == 2, what="job 2 prepared")
    changed = {**second, "shots": 7}
    upcoming.next = None
    assert run(lab, RE, docs, changed)[PREPARED_AHEAD] is False
