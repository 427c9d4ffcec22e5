"""Pre-processing overlaps with the hardware: judged from the sequencer's recorded idle gaps."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from bluesky import RunEngine

from orchestrion.experiment import Experiment, RunRequest, ScanAxis, run_experiment
from orchestrion.lab import Lab
from orchestrion.sequence import PulseSequence

COMPILE_COST = 0.03  # s: a compiler this slow would stall the hardware without look-ahead
POINTS = 12


def _slow_experiment(lab: Lab, compiled_in: list[str]) -> Experiment:
    base = lab.library.experiment("spectroscopy")

    def slow_build(p: Mapping[str, Any], shots: int) -> PulseSequence:
        compiled_in.append(threading.current_thread().name)
        time.sleep(COMPILE_COST)  # stands for an expensive compilation
        return base.build_sequence(p, shots)

    return Experiment(
        name="slow_spectroscopy",
        description="spectroscopy with a slow compiler",
        parameters=base.parameters,
        build_sequence=slow_build,
        default_scans=(ScanAxis.linear("spectroscopy.detuning", -50e3, 50e3, POINTS),),
    )


def _idle_gaps(lab: Lab, RE: RunEngine, lookahead: int) -> tuple[list[float], list[str]]:
    lab.config = lab.config.model_copy(update={"preprocess_lookahead": lookahead, "preprocess_workers": 2})
    # Each point keeps the sequencer busy ~60 ms, twice the compile cost.
    lab.devices.resource("ion").time_scale = 0.5
    sequencer = lab.devices.usable("sequencer")
    sequencer.executions.clear()
    compiled_in: list[str] = []
    experiment = _slow_experiment(lab, compiled_in)
    RE(run_experiment(experiment, lab, RunRequest(experiment=experiment.name, shots=100)))
    assert len(sequencer.executions) == POINTS
    return sequencer.idle_gaps(), compiled_in


def test_lookahead_hides_compilation_behind_execution(lab: Lab, RE: RunEngine) -> None:
    serial_gaps, _ = _idle_gaps(lab, RE, lookahead=0)
    overlapped_gaps, threads = _idle_gaps(lab, RE, lookahead=4)
    # Without look-ahead the hardware waits for every compilation.
    assert statistics.median(serial_gaps) >= COMPILE_COST
    # With it, the hardware hardly waits: the sequence is ready when the point starts.
    assert statistics.median(overlapped_gaps) < COMPILE_COST / 2
    assert statistics.median(overlapped_gaps) < statistics.median(serial_gaps) / 3
    # The first point is compiled in the plan for validation; the rest in the pool.
    assert sum(name.startswith("preprocess") for name in threads) >= POINTS


@pytest.mark.parametrize("lookahead", [0, 3])
def test_every_point_gets_its_own_sequence_in_order(lab: Lab, RE: RunEngine, lookahead: int) -> None:
    lab.config = lab.config.model_copy(update={"preprocess_lookahead": lookahead})
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
