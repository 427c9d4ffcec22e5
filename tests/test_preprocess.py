"""Pre-processing overlaps with the hardware: judged from when compilations start against the
sequencer's recorded busy intervals (an order of events, not a duration: the machine is shared)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig
from orchestrion.errors import PreprocessingError
from orchestrion.experiment import SWITCH_INTERVAL, Experiment, RunRequest, ScanAxis, run_experiment
from orchestrion.lab import Lab
from orchestrion.schema import SEQUENCES
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
    # Threads: the compiler records where it ran in this process's memory.
    lab.config = lab.config.model_copy(
        update={"preprocess_lookahead": lookahead, "preprocess_workers": 2, "preprocess_processes": False}
    )
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
    lab.config = lab.config.model_copy(update={"preprocess_lookahead": 3, "preprocess_processes": False})
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


def _experiment(lab: Lab, build: Any, points: int = 6) -> Experiment:
    base = lab.library.experiment("spectroscopy")
    return Experiment(
        name="spectroscopy", description="", parameters=base.parameters, build_sequence=build,
        default_scans=(ScanAxis.linear("spectroscopy.detuning", -50e3, 50e3, points),),
    )  # fmt: skip


def _played(docs: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The run's distinct sequences, from its 'sequences' stream."""
    stream = {d["uid"] for d in docs["descriptor"] if d["name"] == SEQUENCES}
    return [json.loads(e["data"]["sequence-json"]) for e in docs["event"] if e["descriptor"] in stream]


def test_worker_processes_are_the_default_and_the_compiler_need_not_be_picklable(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]
) -> None:
    assert OrchestrionConfig().preprocess_processes
    base = lab.library.experiment("spectroscopy")
    lock = threading.Lock()  # a compiler holding something pickle refuses: inherited at the fork, not pickled

    def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
        with lock:
            sequence = base.build_sequence(p, shots)
        data = sequence.model_dump()
        data["operations"][0]["label"] = f"compiled in {os.getpid()}"
        return PulseSequence.model_validate(data)

    lab.config = lab.config.model_copy(update={"preprocess_lookahead": 3})
    RE(run_experiment(_experiment(lab, build), lab, RunRequest(experiment="spectroscopy", shots=10)))
    where = [sequence["operations"][0]["label"] for sequence in _played(docs)]
    assert len(where) == 6
    # The first point in the plan, before the run opens; the others in the workers.
    assert where[0] == f"compiled in {os.getpid()}"
    assert f"compiled in {os.getpid()}" not in where[1:]
    assert docs["stop"][-1]["exit_status"] == "success"


def test_a_sequence_that_cannot_leave_its_worker_process_ends_the_run_saying_so(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]
) -> None:
    base = lab.library.experiment("spectroscopy")

    class LocalSequence(PulseSequence):  # pickle finds no class by this name
        pass

    def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
        return LocalSequence.model_validate(base.build_sequence(p, shots).model_dump())

    with pytest.raises(PreprocessingError, match=r"point 1: .*cannot be sent back.*preprocess_processes: false"):
        RE(run_experiment(_experiment(lab, build), lab, RunRequest(experiment="spectroscopy", shots=10)))
    assert docs["stop"][-1]["exit_status"] == "fail"
    assert "1 points kept" in docs["stop"][-1]["reason"]
    # In threads the same compiler is fine.
    lab.config = lab.config.model_copy(update={"preprocess_processes": False})
    RE(run_experiment(_experiment(lab, build), lab, RunRequest(experiment="spectroscopy", shots=10)))
    assert docs["stop"][-1]["exit_status"] == "success"


@pytest.mark.timeout(120)
def test_a_worker_process_killed_mid_run_fails_the_run_at_once_keeping_its_points(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]
) -> None:
    base = lab.library.experiment("spectroscopy")
    parent = os.getpid()
    fatal = ScanAxis.linear("spectroscopy.detuning", -50e3, 50e3, 6).values[4]

    def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
        if os.getpid() != parent and p["spectroscopy.detuning"] == fatal:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return base.build_sequence(p, shots)

    sequencer = lab.devices.usable("sequencer")
    sequencer.executions.clear()
    lab.config = lab.config.model_copy(update={"preprocess_lookahead": 2})
    with pytest.raises(PreprocessingError, match="a worker process ended while compiling"):
        RE(run_experiment(_experiment(lab, build), lab, RunRequest(experiment="spectroscopy", shots=10)))
    stop = docs["stop"][-1]
    assert stop["exit_status"] == "fail"
    kept = len(sequencer.executions)
    assert 1 <= kept <= 4
    assert f"({kept} points kept)" in stop["reason"]
    primary = {d["uid"] for d in docs["descriptor"] if d["name"] == "primary"}
    assert sum(e["descriptor"] in primary for e in docs["event"]) == kept
    # The next run forks workers of its own.
    RE(run_experiment(_experiment(lab, base.build_sequence), lab, RunRequest(experiment="spectroscopy", shots=10)))
    assert docs["stop"][-1]["exit_status"] == "success"


def test_ctrl_c_in_the_terminal_is_the_runengines_not_the_workers(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]
) -> None:
    # A terminal sends SIGINT to the whole process group, the forked workers included:
    # they ignore it (rather than run whatever handler the RunEngine's process had).
    base = lab.library.experiment("spectroscopy")
    parent = os.getpid()

    def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
        sequence = base.build_sequence(p, shots)
        if os.getpid() == parent:
            return sequence
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        data = sequence.model_dump()
        data["operations"][0]["label"] = f"SIGINT ignored: {ignored}"
        return PulseSequence.model_validate(data)

    RE(run_experiment(_experiment(lab, build), lab, RunRequest(experiment="spectroscopy", shots=10)))
    assert docs["stop"][-1]["exit_status"] == "success"
    assert [sequence["operations"][0]["label"] for sequence in _played(docs)][1:] == ["SIGINT ignored: True"] * 5
