"""Scan ids are unique per home: across processes, restarts and every kind of session."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig
from orchestrion.session import LabSession, ScanIdCounter
from orchestrion.worker import WorkerEnvironment
from tests.support import wait_until

ORCHESTRION = str(Path(sys.executable).with_name("orchestrion"))

TAKER = """
import sys, time
from pathlib import Path
from orchestrion.session import ScanIdCounter
home, go, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
counter = ScanIdCounter(home)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
print(" ".join(str(counter({})) for _ in range(count)), flush=True)
"""


def test_processes_taking_ids_at_once_never_share_one(tmp_path: Path) -> None:
    home, go = tmp_path / "home", tmp_path / "go"
    takers = [
        subprocess.Popen([sys.executable, "-c", TAKER, str(home), str(go), "40"], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        for taker in takers:
            assert taker.stdout is not None
            assert taker.stdout.readline().strip() == "ready"
        go.touch()  # all four take their ids at the same time
        taken = [[int(i) for i in taker.communicate(timeout=120)[0].split()] for taker in takers]
    finally:
        for taker in takers:
            taker.kill()
            taker.wait()
    assert all(ids == sorted(ids) and len(ids) == 40 for ids in taken)
    assert sorted(i for ids in taken for i in ids) == list(range(1, 161))
    assert ScanIdCounter(home).last() == 160


def test_a_killed_taker_leaves_a_whole_number(tmp_path: Path) -> None:
    home = tmp_path / "home"
    endless = TAKER.replace("range(count)", "iter(int, 1)")
    taker = subprocess.Popen([sys.executable, "-c", endless, str(home), str(tmp_path), "0"], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: ScanIdCounter(home).last() > 50, what="ids being taken")
    finally:
        taker.kill()
        taker.wait()
    last = ScanIdCounter(home).last()
    assert ScanIdCounter(home)({}) == last + 1


def test_run_engine_metadata_can_jump_ahead_but_never_back(tmp_path: Path) -> None:
    counter = ScanIdCounter(tmp_path)
    assert counter({}) == 1
    assert counter({"scan_id": 100}) == 101
    assert counter({"scan_id": 5}) == 102


def test_every_session_numbers_its_runs_from_the_home(config: OrchestrionConfig) -> None:
    ScanIdCounter(config.home).take(41)
    session = LabSession(config, run_engine=RunEngine({}))
    worker = WorkerEnvironment(config, worker=False)
    # The queue-server worker and the shell build their RunEngines through LabSession.
    for RE in (session.RE, worker.RE):
        assert isinstance(RE.scan_id_source, ScanIdCounter)
        assert RE.scan_id_source.path == config.home / "scan_id"


def _run(home: Path) -> dict[str, object]:
    env = os.environ | {
        "ORCHESTRION_HOME": str(home),
        "ORCHESTRION_SIM_TIME_SCALE": "0.02",
        "ORCHESTRION_TILED_ENABLED": "false",
    }
    args = [ORCHESTRION, "run", "ramsey", "--scan", "ramsey.wait=0:1e-5:3", "--shots", "5", "--json"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_runs_of_separate_processes_get_successive_scan_ids_and_file_names(tmp_path: Path) -> None:
    home = tmp_path / "home"
    names = [Path(str(_run(home)["hdf5"])).name for _ in range(3)]
    # Before: every process started again at 1, so each file was named ..._scan1_...
    assert [re.search(r"_scan(\d+)_", name).group(1) for name in names] == ["1", "2", "3"]  # type: ignore[union-attr]
    assert ScanIdCounter(home).last() == 3
