"""Never report success for data that was not written: killed processes, full disks, the catalog catching up.

Real processes, real signals, a real small file system.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import pytest

from orchestrion.pipeline import BUNDLED, open_embedded_catalog
from orchestrion.schema import POINT_KEY

from .support import wait_until

ORCHESTRION = Path(sys.executable).with_name("orchestrion")


def _children_of(parent: int) -> Iterator[tuple[int, bytes]]:
    """Process id and command line of each process whose parent is ``parent``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent:
            yield int(stat.parent.name), cmdline


def _helper_of(parent: int) -> int | None:
    """The post-processing helper process started by ``parent``."""
    return next((pid for pid, cmdline in _children_of(parent) if b"orchestrion.pipeline._helper" in cmdline), None)


def _compiling_workers_of(parent: int) -> list[int]:
    """The pre-processing worker processes ``parent`` forked (they share its command line)."""
    command = Path(f"/proc/{parent}/cmdline").read_bytes()
    return [pid for pid, cmdline in _children_of(parent) if cmdline == command]


def _points_in(data: Path) -> int:
    files = list(data.glob("*.h5"))
    if not files:
        return 0
    with h5py.File(files[0], "r", swmr=True) as f:
        return int(f["entry/points"][()])


def _hdf5_columns(path: str) -> dict[str, list[float]]:
    """Every scalar column of a file's ``/entry/data``, by its original data key."""
    with h5py.File(path, "r") as f:
        data = f["entry/data"]
        return {
            str(data[name].attrs.get("data_key", name)): data[name][:].tolist()
            for name in data
            if isinstance(data[name], h5py.Dataset) and data[name].ndim == 1 and data[name].dtype.kind in "fiu"
        }


def test_a_post_processing_process_killed_mid_scan_costs_no_point_of_the_file_or_the_catalog(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRION_SIM_TIME_SCALE", "1.0")  # about 0.1 s a point: time to kill mid-scan
    run = subprocess.Popen(
        [str(ORCHESTRION), "run", "spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:300",
         "--shots", "100", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        helper = wait_until(lambda: _helper_of(run.pid), timeout=120, what="the post-processing process")
        wait_until(lambda: _points_in(home / "data") >= 20, timeout=240, what="20 points in the run's file")
        os.kill(helper, signal.SIGKILL)
        killed_at = _points_in(home / "data")
        out, err = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert killed_at < 300, "the helper was killed after the scan: nothing tested"
    # A new helper took the run over from its spool and what followed: every point the
    # hardware produced is in the run's one file and in the catalog, and the run says so.
    assert run.returncode == 0, err
    report = json.loads(out)
    assert (report["status"], report["points"], report["measured_points"]) == ("success", 300, 300), report
    assert [p.name for p in (home / "data").iterdir() if p.suffix == ".h5" or ".h5" in p.name] == [
        Path(report["hdf5"]).name
    ]
    with h5py.File(report["hdf5"], "r") as f:  # a plain reader opens it: it was closed, not recovered
        assert f["entry/status"][()] == b"success"
        assert int(f["entry/points"][()]) == 300
    columns = _hdf5_columns(report["hdf5"])
    assert columns[POINT_KEY] == list(range(300))
    catalog = open_embedded_catalog(home)
    try:
        entry = catalog.client[report["run_uid"]]
        assert entry.metadata["stop"]["exit_status"] == "success"
        table = entry[BUNDLED].read()
        # Point by point, the catalog holds what the file holds.
        compared = [key for key in columns if key in table]
        for key in compared:
            assert table[key].values.tolist() == pytest.approx(columns[key], nan_ok=True), key
        assert POINT_KEY in compared, compared
        assert len(compared) >= 3, compared
        assert entry.metadata["orchestrion"]["hdf5"] == report["hdf5"]
    finally:
        catalog.close()
    # Nothing is left to repair, and no spool is left behind.
    assert list((home / "spool").glob("*")) == []
    again = subprocess.run(
        [str(ORCHESTRION), "catalog", "repair", "--json"], capture_output=True, text=True, timeout=240, check=True
    )
    assert json.loads(again.stdout)["runs"] == []


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_orchestrion_run_leaves_file_and_catalog_holding_the_same_points(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRION_SIM_TIME_SCALE", "1.0")
    run = subprocess.Popen(
        [str(ORCHESTRION), "run", "spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:600",
         "--shots", "100", "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        helper = wait_until(lambda: _helper_of(run.pid), timeout=120, what="the post-processing process")
        wait_until(lambda: _points_in(home / "data") >= 20, timeout=240, what="20 points in the run's file")
        workers = _compiling_workers_of(run.pid)
    finally:
        run.kill()  # SIGKILL: no stop document, no close
        run.wait()
    # Its pre-processing workers (forked, preprocess_processes) end with it: they
    # outlived it for ever, waiting on their task pipe.
    assert workers, "the run compiled in no worker process: nothing tested"
    wait_until(lambda: not any(_running(pid) for pid in workers), timeout=60, what="the run's compiling workers to end")
    # The helper finishes what it was handed: the file closed "incomplete", the run in
    # the catalog with the same points, its spool gone.
    wait_until(lambda: not _running(helper), timeout=240, what="the orphaned helper to finish")
    (path,) = (home / "data").glob("*.h5")
    with h5py.File(path, "r") as f:
        assert f["entry/status"][()] == b"incomplete"
        points = int(f["entry/points"][()])
        uid = f["entry/run_uid"][()].decode()
    assert 20 <= points < 600
    catalog = open_embedded_catalog(home)
    try:
        entry = catalog.client[uid]
        assert entry.metadata["stop"]["exit_status"] == "fail"
        assert len(entry[BUNDLED].read(["seq_num"])["seq_num"]) == points
    finally:
        catalog.close()
    assert list((home / "spool").glob("*")) == []


@pytest.fixture
def small_disk(home: Path) -> Iterator[Path]:
    """``home/data`` on a real 2 MB tmpfs (needs the right to mount: root)."""
    data = home / "data"
    data.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(data)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def _run(*arguments: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run([str(ORCHESTRION), "run", *arguments, "--json"], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def test_a_full_disk_costs_no_durable_point_and_the_home_writes_normally_once_there_is_room(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRION_TILED_ENABLED", "false")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_400_000)  # what the rest of the lab's data take
    # About 3.2 MB of per-shot counts: more than the disk holds.
    code, full, err = _run("spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:400", "--shots", "1000")
    assert code == 1, err
    assert full["status"] == "incomplete"
    assert full["measured_points"] == 400
    assert full["points"] < 400
    assert full["hdf5"] is not None
    with h5py.File(full["hdf5"], "r", swmr=True) as f:
        # Never more reported than the file holds, every counted row a real point.
        durable = int(f["entry/points"][()])
        assert 0 < full["points"] <= durable
        assert f["entry/data/point_index"][:durable].tolist() == list(range(durable))
        assert f["entry/data/sequencer_counts"][:durable].sum(axis=1).min() > 0
    # While the disk is full, a run says so: no success for a file that was never written.
    code, blocked, err = _run("spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:5", "--shots", "10")
    assert code == 1, err
    assert (blocked["status"], blocked["points"]) == ("incomplete", 0)
    # Room again: the next run writes normally; the torn file was recovered or set aside.
    filler.unlink()
    code, after, err = _run("spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:11", "--shots", "10")
    assert code == 0, err
    assert (after["status"], after["points"]) == ("success", 11)
    with h5py.File(after["hdf5"], "r") as f:
        assert f["entry/points"][()] == 11
    # The torn file's lock is gone once it is recovered; a recovery that still lacks room
    # (it rewrites the file beside itself) keeps the lock, says so, and is retried later.
    for lock in (small_disk / ".writing").glob("*.lock"):
        name = lock.name.removesuffix(".lock")
        assert f"could not recover {small_disk / name} for lack of space; it is retried later" in err, err
    # The full run's file is readable (by an SWMR reader while its recovery waits for
    # room), not marked a success; the file the full disk never let exist is set aside
    # with a record, so no later run trips over it.
    with h5py.File(full["hdf5"], "r", swmr=True) as f:
        assert f["entry/status"][()] in (b"incomplete", b"error")
        assert f["entry/points"][()] >= full["points"]
    if blocked["hdf5"] is not None:
        assert not Path(blocked["hdf5"]).exists()
        (record,) = (small_disk / ".unrecoverable").glob("*.json")
        assert json.loads(record.read_text())["file"] == Path(blocked["hdf5"]).name
