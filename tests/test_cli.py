"""The `orchestrion` command line, end to end in a temporary $ORCHESTRION_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ORCHESTRION = str(Path(sys.executable).with_name("orchestrion"))


def orchestrion(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "ORCHESTRION_HOME": str(home),
        "ORCHESTRION_SIM_TIME_SCALE": "0.02",
        "ORCHESTRION_SIM_SEED": "99",
    }
    return subprocess.run([ORCHESTRION, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_run_json_reports_the_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = orchestrion(
        "run", "spectroscopy", "--scan", "spectroscopy.detuning=-50e3:50e3:7", "--shots", "20", "--json", home=home
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "success"
    assert report["points"] == 7
    assert len(report["run_uid"]) == 36
    assert {"hdf5", "tiled"} <= set(report)


def test_run_with_grid_repetitions_and_pattern(tmp_path: Path) -> None:
    done = orchestrion(
        "run",
        "rabi_flop",
        "--scan",
        "rabi_flop.duration=0:20e-6:3",
        "--scan",
        "rf.frequency=199.99e6:200.01e6:2",
        "--repetitions",
        "2",
        "--pattern",
        "shuffled",
        "--shots",
        "10",
        "--set",
        "qubit.amplitude=0.4",
        "--json",
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["points"] == 12


def test_run_summary_on_a_terminal_less_stdout(tmp_path: Path) -> None:
    done = orchestrion("run", "spectroscopy", "--shots", "20", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "spectroscopy run" in done.stdout
    assert "success, 31 points" in done.stdout
    assert "fit center" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nonexistent"], "error: unknown experiment 'nonexistent'"),
        (
            ["run", "spectroscopy", "--set", "qubit.nothing=1"],
            "error: experiment 'spectroscopy' reads no parameter 'qubit.nothing'",
        ),
        (["run", "spectroscopy", "--set", "qubit.frequency=loud"], "error: qubit.frequency: 'loud' is not a number"),
        (["run", "spectroscopy", "--set", "qubit.amplitude=2"], "error: qubit.amplitude: 2.0 is above the maximum 1"),
        (["run", "spectroscopy", "--set", "qubit.amplitude"], "error: --set 'qubit.amplitude': expected ID=VALUE"),
        (
            ["run", "spectroscopy", "--scan", "spectroscopy.detuning=1:2"],
            "error: scan 'spectroscopy.detuning=1:2': expected ID=START:STOP:NUM",
        ),
        (["run", "spectroscopy", "--scan", "rf.frequency=0:1e6:3"], "error: rf.frequency: 0 Hz is outside the range"),
        (["run", "spectroscopy", "--shots", "0"], "error: shots must be a whole number from 1 to 100000"),
        (
            ["run", "spectroscopy", "--set", "detection.threshold=2.5"],
            "error: detection.threshold: '2.5' is not an integer",
        ),
        (
            ["run", "spectroscopy", "--set", "spectroscopy.detuning=5"],
            "error: spectroscopy's default scan varies 'spectroscopy.detuning' "
            "(spectroscopy.detuning=-150000:150000:31), so it cannot also be set; "
            "to run at 5 alone, scan that one value: --scan spectroscopy.detuning=5",
        ),
        (
            ["run", "spectroscopy", "--set", "spectroscopy.detuning=5", "--scan", "spectroscopy.detuning=1,2"],
            "error: parameter 'spectroscopy.detuning' is both scanned and set",
        ),
        (["run", "spectroscopi"], "error: unknown experiment 'spectroscopi' (did you mean 'spectroscopy'?)"),
        (
            ["run", "spectroscopy", "--set", "qubit.frequncy=1e9"],
            "error: experiment 'spectroscopy' reads no parameter 'qubit.frequncy' (did you mean 'qubit.frequency'",
        ),
        (
            ["run", "rabi_flop", "--scan", "rf.frequncy=199e6:201e6:3"],
            "error: scan 'rf.frequncy': neither a parameter of 'rabi_flop' nor a settable device parameter"
            " (did you mean 'rf.frequency'",
        ),
        (
            ["run", "spectroscopy", "--scan", "spectroscopy.detuning=0:1:100000000"],
            "error: spectroscopy: the run has 100,000,000 points (100,000,000), above the limit max_run_points",
        ),
        (
            ["run", "spectroscopy", "--repetitions", str(10**9)],
            "error: spectroscopy: the run has 31,000,000,000 points (31 x 1,000,000,000 repetitions)",
        ),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    home = tmp_path / "home"
    done = orchestrion(*args, home=home)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert done.stdout == ""
    assert not home.exists()


def test_experiments_json_lists_parameters_and_scan_options(tmp_path: Path) -> None:
    done = orchestrion("experiments", "--json", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    listing = {item["name"]: item for item in json.loads(done.stdout)}
    assert set(listing) == {"spectroscopy", "rabi_flop", "ramsey", "calibrate_frequency"}
    spectroscopy = listing["spectroscopy"]
    assert spectroscopy["scan_patterns"] == ["linear", "shuffled", "centred"]
    assert spectroscopy["default_scans"][0]["id"] == "spectroscopy.detuning"
    frequency = next(p for p in spectroscopy["parameters"] if p["id"] == "qubit.frequency")
    assert frequency["unit"] == "Hz"
    assert frequency["minimum"] < frequency["default"] < frequency["maximum"]
    assert listing["calibrate_frequency"]["calibrates"] == {"qubit_frequency": "qubit.frequency"}


def test_devices_json_lists_class_role_and_state(tmp_path: Path) -> None:
    done = orchestrion("devices", "--json", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    devices = {d["name"]: d for d in json.loads(done.stdout)}
    assert devices["sequencer"] == devices["sequencer"] | {
        "class": "orchestrion.sim.Sequencer",
        "role": "monitored",
        "state": "connected",
    }
    assert devices["field"]["role"] == "async"
    assert devices["rf"]["role"] == "baseline"


def test_unknown_configuration_is_an_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("sim_time_scale: 0.1\ncolour: blue\n")
    done = orchestrion("experiments", home=home)
    assert done.returncode == 2
    assert "colour" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "spectroscopy", "--set", "qubit.frequency=" + "x" * 5000 + "\n" + "y" * 20],
        ["run", "spectroscopy", "--scan", "spectroscopy.detuning=" + "1," * 3000 + "\nx"],
        ["run", "spectroscopy\n" + "z" * 3000],
    ],
    ids=["long-value", "long-scan", "long-experiment"],
)
def test_very_long_or_multi_line_input_gives_one_shortened_line(tmp_path: Path, args: list[str]) -> None:
    done = orchestrion(*args, home=tmp_path / "home")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ")
    assert len(line) <= 320
    assert line.endswith(("is not a number", "values must be numbers", "ramsey, spectroscopy)")), line
