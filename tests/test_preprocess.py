"""Pre-processing overlaps with the hardware: judged from when compilations start against the
sequencer's recorded busy intervals (an order of events, not a duration: the machine is shared)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from bluesky import RunEngine

from orchestrion.experiment import SWITCH_INTERVAL, Experiment, RunRequest, ScanAxis, run_experiment
from orchestrion.lab import Lab
from orchestrion.sequence import PulseSequence

COMPILE_COST = 0.03  # s: a compiler this slow would stall the hardware without look-ahead
POINTS = 12


def _slow_experiment(lab: Lab, compiled_in: list[tuple[str, float, float]]) -> Experiment:
    base = lab.library.experiment("spectroscopy")

    def slow_build(p: Mapping[str, Any], shots: int) -> PulseSequence:
        started = time.monotonic()
        time.sleep(COMPILE_COST)  # stands for an expensive compilation
        sequence = base.build_sequence(p, shots)
        compiled_in.append((threading.current_thread().name, started, time.monotonic()))
        return sequence

    return Experiment(
        name="slow_spectroscopy",
        description="spectroscopy with a slow compiler",
        parameters=base.parameters,
        build_sequence=slow_build,
        default_scans=(ScanAxis.linear("spectroscopy.detuning", -50e3, 50e3, POINTS),),
    )


def _compiled_while_busy(lab: Lab, RE: RunEngine, lookahead: int) -> tuple[int, list[str]]:
    """How many compilations overlapped the sequencer executing a point; the threads they ran in."""
    lab.config = lab.config.model_copy(update={"preprocess_lookahead": lookahead, "preprocess_workers": 2})
    # Each point keeps the sequencer busy ~60 ms, twice the compile cost.
    lab.devices.resource("ion").time_scale = 0.5
    sequencer = lab.devices.usable("sequencer")
    sequencer.executions.clear()
    compiled_in: list[tuple[str, float, float]] = []
    experiment = _slow_experiment(lab, compiled_in)
    RE(run_experiment(experiment, lab, RunRequest(experiment=experiment.name, shots=100)))
    assert len(sequencer.executions) == POINTS
    assert len(compiled_in) >= POINTS, "every point compiled"
    busy = [(e.started, e.finished) for e in sequencer.executions]
    during = sum(any(began < ended and started < end for started, ended in busy) for _, began, end in compiled_in)
    return during, [name for name, _, _ in compiled_in]


def test_lookahead_hides_compilation_behind_execution(lab: Lab, RE: RunEngine) -> None:
    # Without look-ahead the hardware waits for every compilation: none overlaps an execution.
    serial, _ = _compiled_while_busy(lab, RE, lookahead=0)
    assert serial == 0
    # With it, the next points compile while the sequencer executes (all but the first,
    # compiled in the plan for validation, and the pool's first batch, before the first point).
    overlapped, threads = _compiled_while_busy(lab, RE, lookahead=4)
    assert overlapped >= POINTS - 1 - 4
    assert sum(name.startswith("preprocess") for name in threads) == POINTS - 1


@pytest.mark.parametrize(("lookahead", "processes"), [(0, False), (3, False), (3, True)])
def test_every_point_gets_its_own_sequence_in_order(lab: Lab, RE: RunEngine, lookahead: int, processes: bool) -> None:
    # processes: compiled in forked worker processes, the sequences pickled back.
    lab.config = lab.config.model_copy(update={"preprocess_lookahead": lookahead, "preprocess_processes": processes})
    sequencer = lab.devices.usable("sequencer")
    result = RE(lab.library.entry("spectroscopy").plan(scan=["spectroscopy.detuning=-2e3:2e3:5"], shots=10))
    hashes = [execution.sequence_hash for execution in sequencer.executions]
    expected = [
        lab.library.experiment("spectroscopy")
        .build_sequence(
            {
                **{
                    pid: v.value
                    for pid, v in lab.parameters.snapshot(lab.library.experiment("spectroscopy").parameter_ids).items()
                },
                "spectroscopy.detuning": d,
            },
            10,
        )
        .content_hash
        for d in (-2e3, -1e3, 0.0, 1e3, 2e3)
    ]
    assert hashes == expected
    assert result.exit_status == "success"


def test_compiling_threads_hand_the_gil_back_soon_and_the_first_point_is_compiled_once(lab: Lab, RE: RunEngine) -> None:
    # With compilers holding the GIL for Python's default 5 ms at a time, the RunEngine's
    # threads wait that long each time they need it, and the hardware with them.
    default = sys.getswitchinterval()
    seen: list[float] = []
    base = lab.library.experiment("spectroscopy")

    def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
        seen.append(sys.getswitchinterval())
        return base.build_sequence(p, shots)

    experiment = Experiment(
        name="spectroscopy", description="", parameters=base.parameters, build_sequence=build,
        default_scans=(ScanAxis.linear("spectroscopy.detuning", -50e3, 50e3, 6),),
    )  # fmt: skip
    lab.config = lab.config.model_copy(update={"preprocess_lookahead": 3})
    RE(run_experiment(experiment, lab, RunRequest(experiment="spectroscopy", shots=10)))
    # Before the run opens the plan compiles the first point (a bad sequence is refused
    # there) and the run limits' estimate its grid's first and last: at the default
    # interval.  The first point's sequence is handed to the pool's queue: the pool
    # compiles the 5 others, once each, with the GIL changing hands sooner.
    in_pool = [interval for interval in seen if interval <= SWITCH_INTERVAL]
    assert len(in_pool) == 5
    assert seen[: -len(in_pool)] == [default] * (len(seen) - len(in_pool))
    assert default > SWITCH_INTERVAL
    assert sys.getswitchinterval() == default
