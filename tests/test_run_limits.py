"""Run limits: a request too large to run is refused at once; an accepted one streams its points."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from bluesky import RunEngine

from orchestrion.errors import InputError
from orchestrion.experiment import Preprocessor, RunLimits, RunRequest, ScanPoint, prepare_run
from orchestrion.jobs import JobRequest, validate_request
from orchestrion.lab import Lab
from orchestrion.sequence import PulseSequence


def _limits(lab: Lab, **changes: float) -> RunLimits:
    return RunLimits.of(lab.config.model_copy(update=changes))


def _prepare(lab: Lab, limits: RunLimits | None = None, **request: Any) -> Any:
    experiment = lab.library.experiment("spectroscopy")
    return prepare_run(
        experiment,
        lab.devices,
        RunRequest(experiment="spectroscopy", **request),
        limits=limits or RunLimits.of(lab.config),
    )


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        (
            {"scan": ("spectroscopy.detuning=0:1:100000000",)},
            r"spectroscopy: the run has 100,000,000 points \(100,000,000\), above the limit max_run_points = 1,000,000",
        ),
        (
            {"repetitions": 10**9},
            r"the run has 31,000,000,000 points \(31 x 1,000,000,000 repetitions\), above the limit max_run_points",
        ),
        (
            {"scan": ("spectroscopy.detuning=0:1:900000", "rf.frequency=199e6:201e6:3")},
            r"has 2,700,000 points \(900,000 x 3\)",
        ),
        (
            {"scan": ("spectroscopy.detuning=0:1:500000",), "shots": 10_000},
            r"would hold about 43,500 MB of readings \(500,000 points of 10000 shots\), "
            r"above the limit max_run_memory_mb = 2000",
        ),
    ],
)
def test_a_run_too_large_is_refused_at_once_naming_the_limit(
    lab: Lab, request_fields: dict[str, Any], message: str
) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InputError, match=message):
            _prepare(lab, **request_fields)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5  # before the fix: minutes, then the kernel's OOM killer
    assert peak < 5_000_000  # bytes


def test_a_run_that_would_take_too_long_is_refused_with_its_estimate(lab: Lab) -> None:
    # 1,000 points of 1,000 shots of a ~1.2 ms shot: about 20 minutes of sequences.
    prepared = _prepare(lab, scan=("spectroscopy.detuning=-1e5:1e5:1000",), shots=1000)
    assert prepared.estimate.duration == pytest.approx(1000 * 1000 * 1.2e-3, rel=0.5)
    with pytest.raises(InputError, match=r"would take about 2\d\.\d min of pulse sequences .*max_run_duration = 600 s"):
        _prepare(lab, _limits(lab, max_run_duration=600), scan=("spectroscopy.detuning=-1e5:1e5:1000",), shots=1000)


def test_the_duration_estimate_follows_the_scanned_pulse_length(lab: Lab) -> None:
    experiment = lab.library.experiment("rabi_flop")
    short, long = (
        prepare_run(
            experiment,
            lab.devices,
            RunRequest(experiment="rabi_flop", scan=(f"rabi_flop.duration=0:{stop}:11",), shots=100),
            limits=RunLimits.of(lab.config),
        ).estimate.duration
        for stop in (1e-6, 1e-3)
    )
    # The mean pulse grows by 0.5 ms per shot, 1,100 shots in all.
    assert long - short == pytest.approx(1100 * 0.5e-3, rel=0.05)


def test_the_queue_submission_refuses_the_same_runs(lab: Lab) -> None:
    request = JobRequest(experiment="spectroscopy", repetitions=10**9)
    with pytest.raises(InputError, match="above the limit max_run_points"):
        validate_request(lab.library, lab.devices, request, limits=RunLimits.of(lab.config))


def test_the_plan_refuses_before_any_document(lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]) -> None:
    # What the queue server's worker runs when a plain queue-server client adds the item.
    plan = lab.library.entry("spectroscopy").plan
    started = time.perf_counter()
    with pytest.raises(InputError, match="above the limit max_run_points = 1,000,000"):
        RE(plan(repetitions=10**9))
    assert time.perf_counter() - started < 5
    assert docs == {}
    lab.config = lab.config.model_copy(update={"max_run_duration": 0.01})
    with pytest.raises(InputError, match="max_run_duration"):
        RE(plan(shots=100))
    assert docs == {}


def test_an_accepted_large_run_holds_no_list_of_its_points(lab: Lab) -> None:
    tracemalloc.start()
    try:
        prepared = _prepare(lab, _limits(lab, max_run_memory_mb=1e6), scan=("spectroscopy.detuning=0:1:1000000",))
        points = prepared.points()
        first = [next(points) for _ in range(3)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert prepared.num_points == 1_000_000
    assert [p.index for p in first] == [0, 1, 2]
    # Before: every point made at once, about 400 bytes each.
    assert peak < 10_000_000


def test_the_preprocessor_takes_points_only_as_far_as_it_looks_ahead(RE: RunEngine) -> None:
    taken: list[int] = []

    def endless() -> Iterator[ScanPoint]:
        index = 0
        while True:
            taken.append(index)
            yield ScanPoint(index, 0, {})
            index += 1

    def compile_point(point: ScanPoint) -> PulseSequence:
        detect = {"op": "detect", "duration": 1e-4, "threshold": 1}
        return PulseSequence.model_validate({"shots": 1, "operations": [detect]})

    def plan() -> Any:
        with (
            ThreadPoolExecutor(1) as pool,
            Preprocessor(compile_point, endless(), lookahead=4, workers=1, executor=pool) as preprocessor,
        ):
            for index in range(3):
                yield from preprocessor.sequence_for(index)

    RE(plan())
    assert taken == list(range(2 + 4 + 1))  # point 2 and the four after it
