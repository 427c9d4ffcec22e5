"""The post-processing process a run leaves behind for the next (ADR 0814).

Real `orchestrion run` processes, real standby processes, real signals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest

from orchestrion.pipeline import open_embedded_catalog
from orchestrion.pipeline._standby import adopt_standby, exit_status, spawn_standby, standby_directory, standby_key

from .support import wait_until

ORCHESTRION = Path(sys.executable).with_name("orchestrion")
# A helper for a stage that imports nothing heavy: what the in-process tests hand around.
LIGHT_HELPER = (sys.executable, "-m", "orchestrion.pipeline._helper", "--niceness", "0", "--preload", "json")


def standbys_of(home: Path) -> list[int]:
    """Process ids of the standby helpers of ``home`` waiting to be adopted.

    Found by their sockets: the listening process's credentials come with a connection
    (a probe that hands nothing over, which a standby ignores); a standby's first process,
    which only forks, never listens.
    """
    wanted = b"\0".join([b"--standby-home", str(home.resolve()).encode()])
    found = []
    for path in standby_directory().glob("*.sock"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                pid = int.from_bytes(credentials[:4], sys.byteorder)
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
        if wanted in cmdline:
            found.append(pid)
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.fixture
def standby_on(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Standbys on for this test's home (the suite turns them off), ended afterwards."""
    monkeypatch.setenv("ORCHESTRION_POST_PROCESSING_STANDBY", "120")
    yield home
    for pid in standbys_of(home):
        os.kill(pid, signal.SIGKILL)


def run(*arguments: str) -> dict[str, object]:
    done = subprocess.run([str(ORCHESTRION), "run", *arguments, "--json"], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_the_next_run_adopts_the_standby_a_run_left_and_its_data_are_whole(standby_on: Path) -> None:
    home = standby_on
    first = run("rabi_flop", "--scan", "rabi_flop.duration=0:40e-6:5", "--shots", "5")
    assert first["status"] == "success"
    (standby,) = wait_until(lambda: standbys_of(home), timeout=60, what="the standby the first run left")
    second = run("rabi_flop", "--scan", "rabi_flop.duration=0:40e-6:7", "--shots", "5")
    # The standby waits 120 s unless adopted: the second run took it, and left a new one.
    assert gone(standby)
    (successor,) = wait_until(lambda: standbys_of(home), timeout=60, what="the standby the second run left")
    assert successor != standby
    assert (second["status"], second["points"]) == ("success", 7), second
    with h5py.File(str(second["hdf5"]), "r") as f:
        assert f["entry/status"][()] == b"success"
        assert int(f["entry/points"][()]) == 7
    catalog = open_embedded_catalog(home)
    try:
        assert catalog.client[str(second["run_uid"])].metadata["stop"]["exit_status"] == "success"
    finally:
        catalog.close()


def test_an_adopted_standby_killed_mid_scan_is_taken_over_without_losing_a_point(
    standby_on: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = standby_on
    run("rabi_flop", "--scan", "rabi_flop.duration=0:40e-6:3", "--shots", "5")
    (standby,) = wait_until(lambda: standbys_of(home), timeout=60, what="the standby the first run left")
    monkeypatch.setenv("ORCHESTRION_SIM_TIME_SCALE", "1.0")  # about 0.1 s a point: time to kill mid-scan
    scan = subprocess.Popen(
        [str(ORCHESTRION), "run", "spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:200",
         "--shots", "100", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def points() -> int:
            files = list((home / "data").glob("*spectroscopy*.h5"))
            if not files:
                return 0
            with h5py.File(files[0], "r", swmr=True) as f:
                return int(f["entry/points"][()])

        wait_until(lambda: points() >= 20, timeout=240, what="20 points written by the adopted standby")
        assert not gone(standby), "the scan's points were not written by the standby it adopted"
        os.kill(standby, signal.SIGKILL)
        killed_at = points()
        out, err = scan.communicate(timeout=600)
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
    assert killed_at < 200, "killed after the scan: nothing tested"
    assert scan.returncode == 0, err
    report = json.loads(out)
    assert (report["status"], report["points"], report["measured_points"]) == ("success", 200, 200), report
    with h5py.File(report["hdf5"], "r") as f:
        assert int(f["entry/points"][()]) == 200
    catalog = open_embedded_catalog(home)
    try:
        assert catalog.client[report["run_uid"]].metadata["stop"]["exit_status"] == "success"
    finally:
        catalog.close()


def test_a_standby_is_adopted_only_by_its_own_command_and_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.mkdir(parents=True)
    spawn_standby(LIGHT_HELPER, home, 120)
    path = standby_directory() / f"{standby_key(LIGHT_HELPER, home)}.sock"
    try:
        wait_until(path.exists, timeout=60, what="the standby's socket")
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
        assert adopt_standby((*LIGHT_HELPER, "--preload", "csv"), home) is None  # another command line
        monkeypatch.setenv("ORCHESTRION_SIM_SEED", "7")
        assert adopt_standby(LIGHT_HELPER, home) is None  # another environment
        monkeypatch.setenv("ORCHESTRION_SIM_SEED", "1234")
        adopted = adopt_standby(LIGHT_HELPER, home)
        assert adopted is not None
        assert not path.exists()  # adopted once: it listens no more
        assert adopt_standby(LIGHT_HELPER, home) is None
        assert adopted.poll() is None
        assert adopted.stdin is not None
        adopted.stdin.close()  # its input ends before any factory: it ends, having done nothing
        adopted.wait(timeout=60)
        assert adopted.poll() is not None
        assert exit_status(adopted) == "exit status unknown: it was a standby this process adopted"
        assert adopted.stdout is not None
        assert adopted.stdout.read() == b""  # nothing was acknowledged: it had nothing
        adopted.stdout.close()
    finally:
        for pid in standbys_of(home):
            os.kill(pid, signal.SIGKILL)


def test_a_standby_ends_when_its_time_is_up_its_home_is_gone_or_it_is_terminated(tmp_path: Path) -> None:
    short, removed, terminated = tmp_path / "short", tmp_path / "removed", tmp_path / "terminated"
    for home in (short, removed, terminated):
        home.mkdir()
    spawn_standby(LIGHT_HELPER, short, 1.0)
    spawn_standby(LIGHT_HELPER, removed, 120)
    spawn_standby(LIGHT_HELPER, terminated, 120)
    (first,) = wait_until(lambda: standbys_of(short), timeout=60, what="the short standby")
    (second,) = wait_until(lambda: standbys_of(removed), timeout=60, what="the second standby")
    (third,) = wait_until(lambda: standbys_of(terminated), timeout=60, what="the third standby")
    removed.rmdir()
    os.kill(third, signal.SIGTERM)
    wait_until(lambda: gone(first), timeout=60, what="the standby whose time was up to end")
    wait_until(lambda: gone(second), timeout=60, what="the standby whose home was removed to end")
    wait_until(lambda: gone(third), timeout=60, what="the terminated standby to end")
    for home in (short, removed, terminated):
        assert not (standby_directory() / f"{standby_key(LIGHT_HELPER, home)}.sock").exists()
        assert not (standby_directory() / f"{standby_key(LIGHT_HELPER, home)}.lock").exists()
