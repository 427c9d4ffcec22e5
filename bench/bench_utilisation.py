"""Within a job: how busy the pre-processor keeps the hardware, from the sequencer's own record.

The simulated sequencer records when it executed each point (`Sequencer.executions`).
A spectroscopy scan runs on the simulated lab in real time (about 0.12 s a point at
100 shots) with a compiler that costs as much CPU as executing the point takes (a busy
loop holding the GIL, then the real compilation), in a `LabSession` as
``orchestrion run`` opens it (the document pipeline with HDF5 and Tiled) and with
ICON's anchor: two pre-processing workers and ten points of look-ahead, in forked
worker processes (the default) and in threads of the RunEngine's process
(``preprocess_processes: false``).  Utilisation = the sequencer's busy time / the run's
wall time (start document to stop document).

Baseline, the bare RunEngine: the same sequencer and RunEngine, the same sequences
compiled beforehand, driven by a bare bluesky plan (``mv`` the program, then
``trigger_and_read``), no pipeline.  Also reported: the utilisation with no look-ahead
(each point compiled when the hardware asks for it), which the look-ahead must beat.

    python -m bench utilisation
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from bench._report import Figure, Goal, collector
from orchestrion.config import load_config
from orchestrion.experiment import Experiment, RunRequest, ScanAxis, run_experiment
from orchestrion.sequence import PulseSequence
from orchestrion.session import LabSession

POINTS = 30
SHOTS = 100
REPEATS = 3
WORKERS, LOOKAHEAD = 2, 10  # ICON: two pre-processing workers, a queue of ten points
GOAL = 0.95


def _spin(seconds: float) -> None:
    """CPU work that holds the GIL like a Python compiler would."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _costly(base: Experiment, time_scale: float) -> Experiment:
    """``base`` with a compiler that costs as long as executing its sequence takes."""

    def build(p: Mapping[str, Any], shots: int) -> PulseSequence:
        sequence = base.build_sequence(p, shots)
        _spin(sequence.duration * time_scale)
        return sequence

    return Experiment(
        name=base.name, description=base.description, parameters=base.parameters, build_sequence=build,
        default_scans=(ScanAxis.linear("spectroscopy.detuning", -50e3, 50e3, POINTS),),
    )  # fmt: skip


class _RunClock:
    """Monotonic times of the run's start and stop documents."""

    def __init__(self) -> None:
        self.start = self.stop = 0.0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.start = time.monotonic()
        elif name == "stop":
            self.stop = time.monotonic()


def _utilisation(sequencer: Any, clock: _RunClock) -> float:
    busy = sum(e.finished - e.started for e in sequencer.executions)
    return float(busy / (clock.stop - clock.start))


def measure(home: Path) -> dict[str, list[float]]:
    config = load_config(home=home, sim_time_scale=1.0, sim_seed=1)
    results: dict[str, list[float]] = {"ours": [], "bare": [], "no look-ahead": [], "threads": [], "free": []}
    with LabSession(config) as session:
        assert session.lab is not None
        lab = session.lab
        sequencer = lab.devices.usable("sequencer")
        experiment = _costly(lab.library.experiment("spectroscopy"), config.sim_time_scale)
        # The same run plan with compilation for free: what the plan's own per-point work
        # (point device, sequences stream, pipeline) leaves, whatever pre-processing does.
        free = _costly(lab.library.experiment("spectroscopy"), 0.0)
        clock = _RunClock()
        session.subscribe(clock)
        values = {pid: v.value for pid, v in lab.parameters.snapshot(experiment.parameter_ids).items()}
        programs = [
            experiment.build_sequence({**values, "spectroscopy.detuning": d}, SHOTS).to_json()
            for d in ScanAxis.linear("spectroscopy.detuning", -50e3, 50e3, POINTS).values
        ]

        @bpp.run_decorator(md={"plan_name": "bare_sequencer"})  # type: ignore[untyped-decorator]
        def bare() -> MsgGenerator[None]:
            for program in programs:
                yield from bps.checkpoint()
                yield from bps.mv(sequencer.program, program)
                yield from bps.trigger_and_read([sequencer])

        def ours(lookahead: int, processes: bool = True, compiler: Experiment = experiment) -> MsgGenerator[Any]:
            lab.config = config.model_copy(update={
                "preprocess_workers": WORKERS, "preprocess_lookahead": lookahead, "preprocess_processes": processes,
            })  # fmt: skip
            return run_experiment(compiler, lab, RunRequest(experiment=compiler.name, shots=SHOTS))

        session.RE(ours(LOOKAHEAD))  # warm up
        session.pipeline.wait_catalogued() if session.pipeline else None
        for _ in range(REPEATS):
            for name, plan in (("bare", lambda: bare()), ("ours", lambda: ours(LOOKAHEAD)),
                               ("no look-ahead", lambda: ours(0)),
                               ("threads", lambda: ours(LOOKAHEAD, processes=False)),
                               ("free", lambda: ours(LOOKAHEAD, compiler=free))):  # fmt: skip
                sequencer.executions.clear()
                if session.pipeline is not None:
                    # The previous runs written first: a run's stop waits until its documents
                    # are in the post-processing helper's pipe, which a helper still busy
                    # with the runs before may not have room for yet (seconds on a loaded
                    # machine), and that is not this run's within-job utilisation.
                    session.pipeline.wait_catalogued()
                if name == "bare" and session.pipeline is not None:
                    session.pipeline.unsubscribe(session.RE)
                session.RE(plan())
                if name == "bare" and session.pipeline is not None:
                    session.pipeline.subscribe(session.RE)
                assert len(sequencer.executions) == POINTS
                results[name].append(_utilisation(sequencer, clock))
    return results


@collector("utilisation")
def figures() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-utilisation-") as tmp:
        results = measure(Path(tmp) / "home")
    about = (f"{POINTS} points of {SHOTS} shots (~0.12 s each), compile cost = execution time, "
             f"{WORKERS} workers, look-ahead {LOOKAHEAD}.")  # fmt: skip
    return [
        Figure(
            "utilisation", "within-job utilisation of the sequencer (busy / run wall time)", "",
            results["ours"], results["bare"], "bare RunEngine, sequences compiled beforehand",
            goal=Goal.at_least(GOAL), note=about + " Compiled in worker processes (the default).",
            missed_because="the RunEngine's own work between points (reading the point, its event through the "
            "pipeline, setting the next program) is close to 5 % at 0.12 s a point: see the baseline and the "
            "run plan with compilation free.",
        ),
        Figure(
            "utilisation", "the same, compiled in threads (preprocess_processes: false)", "",
            results["threads"], results["bare"], "bare RunEngine, sequences compiled beforehand",
            goal=Goal.at_least(GOAL), note=about,
            missed_because="a compiling thread shares the GIL with the RunEngine's thread, whose work between "
            "two points then takes about twice as long (ADR 0820).",
        ),
        Figure(
            "utilisation", "the same run plan, compilation free (the plan's own per-point work)", "",
            results["free"], results["bare"], "bare RunEngine, sequences compiled beforehand",
        ),
        Figure(
            "utilisation", "the same, without look-ahead (compiled when the hardware asks)", "",
            results["no look-ahead"], results["bare"], "bare RunEngine",
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    from bench._report import run

    run(["utilisation"], "utilisation")
