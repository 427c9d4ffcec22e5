"""Ctrl-C and SIGTERM during `orchestrion run`: the run is aborted and closed, one line says so."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import h5py
import pytest

ORCHESTRION = str(Path(sys.executable).with_name("orchestrion"))
# The RunEngine's own log of the first point's event: the scan is under way.
STARTED = re.compile(r"DEBUG bluesky\.RE\.msg: create\(None, \*\(\) \*\*\{'name': 'primary'\}")

# The post-processing helper's start-up warns on every run (its module is imported by its
# package before `python -m` runs it): the pipeline's, not the interrupt's.
RUNPY_WARNING = "RuntimeWarning: 'orchestrion.pipeline._offload' found in sys.modules"

LOG_LEVELS = ("DEBUG ", "INFO ")


class RunningCli:
    """A real `orchestrion -vv run` in its own process group, its stderr read as it comes."""

    def __init__(self, home: Path, *extra: str, tiled: bool) -> None:
        env = os.environ | {
            "ORCHESTRION_HOME": str(home),
            "ORCHESTRION_SIM_TIME_SCALE": "0.02",
            "ORCHESTRION_TILED_ENABLED": str(tiled).lower(),
        }
        args = [ORCHESTRION, "-vv", "run", "spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:5000"]
        # Its own session, as a terminal's job: Ctrl-C goes to the whole process group.
        self.process = subprocess.Popen(
            [*args, "--shots", "200", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if STARTED.search(line):
                self.started.set()

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        self.process.stdout.close()
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code, stdout

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _interrupt(home: Path, sig: signal.Signals, *, group: bool, tiled: bool, extra: tuple[str, ...] = ()) -> Any:
    cli = RunningCli(home, *extra, tiled=tiled)
    try:
        assert cli.started.wait(timeout=180), "\n".join(cli.lines)
        if group:
            os.killpg(cli.process.pid, sig)  # what a terminal does on Ctrl-C
        else:
            cli.process.send_signal(sig)  # what `kill PID` or a service manager does
        code, stdout = cli.finish()
    finally:
        cli.kill()
    # What the user sees without -vv: no log records.
    said = [line for line in cli.lines if not line.startswith(LOG_LEVELS) and RUNPY_WARNING not in line]
    return code, stdout, said


def _check_closed(line: str, sig: signal.Signals) -> tuple[int, Path]:
    match = re.fullmatch(
        rf"interrupted by {sig.name}: spectroscopy run \w{{8}} closed as 'abort' after (\d+) of 5000 points, "
        r"data in (\S+\.h5)",
        line,
    )
    assert match, line
    points, path = int(match.group(1)), Path(match.group(2))
    # Closed: a plain reader opens it (no SWMR, no writer's lock), marked with what happened.
    with h5py.File(path, "r") as f:
        assert f["entry/status"][()] == b"abort"
        assert len(f["entry/data/seq_num"]) == points
    assert points < 5000
    return points, path


def test_ctrl_c_aborts_the_run_and_says_so_in_one_line(tmp_path: Path) -> None:
    code, stdout, said = _interrupt(tmp_path / "home", signal.SIGINT, group=True, tiled=False)
    # Before: an 89-line traceback (RunEngineInterrupted, "Failed to close run", TransitionError).
    assert len(said) == 1, "\n".join(said)
    _check_closed(said[0], signal.SIGINT)
    assert code == 130
    assert stdout == ""


def test_sigterm_aborts_the_run_closes_its_file_and_reports_it(tmp_path: Path) -> None:
    code, stdout, said = _interrupt(tmp_path / "home", signal.SIGTERM, group=False, tiled=True, extra=("--json",))
    # Before: killed at once, the file left 'running' and locked.
    assert len(said) == 1, "\n".join(said)
    points, path = _check_closed(said[0], signal.SIGTERM)
    assert code == 143
    report = json.loads(stdout)
    assert (report["status"], report["points"], report["hdf5"]) == ("abort", points, str(path))
    assert report["tiled"] is not None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_home_is_ready_for_the_next_run_after_an_interrupt(tmp_path: Path, sig: signal.Signals) -> None:
    home = tmp_path / "home"
    _interrupt(home, sig, group=sig is signal.SIGINT, tiled=False)
    env = os.environ | {
        "ORCHESTRION_HOME": str(home),
        "ORCHESTRION_SIM_TIME_SCALE": "0.02",
        "ORCHESTRION_TILED_ENABLED": "false",
    }
    done = subprocess.run(
        [ORCHESTRION, "run", "ramsey", "--scan", "ramsey.wait=0:1e-5:3", "--shots", "5", "--json"],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recovered" not in done.stderr  # nothing was left half-written
    assert "_scan2_" in json.loads(done.stdout)["hdf5"]
