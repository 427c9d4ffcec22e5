"""Faults injected into the document bus's real processes mid-scan (SIGKILL, a Redis
restart, a Tiled restart, a full disk); afterwards every point the hardware produced is
in the run's one HDF5 file and in Tiled, each once, in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from bluesky import RunEngine

from orchestrion.bus import CATALOG_PENDING, DONE, FAILED, BusKeys, build_bus_pipeline, replay
from orchestrion.config import OrchestrionConfig, load_config

from .bus_support import (
    RedisServer,
    TiledServer,
    Workers,
    bus_env,
    count_plan,
    hdf5_points,
    run_files,
    state,
    tiled_points,
    wait_status,
)  # fmt: skip
from .support import wait_until

pytestmark = pytest.mark.stack

POINTS = 300
DELAY = 0.01  # s between points: the scan lasts several seconds


@dataclass
class Bus:
    config: OrchestrionConfig
    redis: RedisServer
    tiled: TiledServer
    client: redis.Redis
    workers: Workers


@pytest.fixture
def bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bus]:
    """Redis, Tiled and a home of the test's own: the faults kill them."""
    redis_server, tiled = RedisServer(tmp_path / "redis"), TiledServer(tmp_path / "tiled")
    redis_server.start()
    tiled.start()
    home = tmp_path / "home"
    home.mkdir()
    env = bus_env(home, redis_server, tiled)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    workers = Workers(home, env)
    try:
        yield Bus(load_config(), redis_server, tiled, client, workers)
    finally:
        workers.stop()
        client.close()
        tiled.stop()
        redis_server.stop()


class Scan:
    """A counting scan on a RunEngine whose pipeline publishes on the bus, with a fault
    injected from another thread once ``when`` holds."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.RE = RunEngine({}, call_returns_result=True)
        self.pipeline = build_bus_pipeline(bus.config)
        self.pipeline.subscribe(self.RE)
        self.points: list[float] = []  # what the hardware produced
        self.RE.subscribe(lambda name, doc: self.points.append(doc["data"]["det"]) if name == "event" else None)
        self.errors: list[BaseException] = []

    def inject(self, when: Callable[[], Any], fault: Callable[[], None], what: str) -> threading.Thread:
        def run() -> None:
            try:
                wait_until(when, timeout=120, interval=0.01, what=what)
                fault()
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def run(self, points: int = POINTS) -> str:
        uid = str(self.RE(count_plan(points, DELAY)).run_start_uids[0])
        return uid

    def first_run(self) -> str | None:
        entries = self.bus.client.xrange(BusKeys().runs, count=1)
        return entries[0][1][b"run"].decode() if entries else None

    def processing(self) -> dict[str, str] | None:
        """The state of the run while a worker writes it, once its file has points."""
        uid = self.first_run()
        if uid is None:
            return None
        current = state(self.bus.client, uid)
        path = current.get("hdf5")
        return current if current.get("status") == "processing" and path and Path(path).is_file() else None


def assert_written_once(bus: Bus, uid: str, points: list[float]) -> None:
    """The run's one HDF5 file and its Tiled entry hold exactly ``points``, in order."""
    final = state(bus.client, uid)
    assert final["status"] == DONE, final
    files = run_files(bus.config.data_dir)
    assert [str(p) for p in files] == [final["hdf5"]]
    status, in_file = hdf5_points(files[0])
    assert status == "success"
    assert in_file == points
    stop, in_catalog = tiled_points(bus.tiled, uid)
    assert stop["exit_status"] == "success"
    assert in_catalog == points
    assert len(set(points)) == len(points) == POINTS


def worker_pid(bus: Bus, name: str) -> int:
    """The pid of the worker process itself (its supervisor is the process `Workers` started)."""
    beat = bus.client.get(BusKeys().worker(name))
    assert beat is not None
    return int(json.loads(beat)["pid"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("recovery", ["another worker claims the run", "its supervisor starts it again"])
def test_sigkill_of_a_post_processing_worker_mid_scan_loses_and_doubles_nothing(bus: Bus, recovery: str) -> None:
    peer = recovery.startswith("another")
    bus.workers.start("post-processing-1")
    if peer:
        bus.workers.start("post-processing-2")
    scan = Scan(bus)
    killed: list[tuple[str, int]] = []

    def kill() -> None:
        current = scan.processing()
        assert current is not None
        name = current["worker"]
        pid = worker_pid(bus, name)
        killed.append((name, pid))
        if peer:
            bus.workers.kill(name)  # the supervisor: the worker dies with it
        else:
            os.kill(pid, signal.SIGKILL)

    fault = scan.inject(scan.processing, kill, "a worker writing the run")
    uid = scan.run()
    fault.join(timeout=120)
    assert not scan.errors, scan.errors
    ((name, pid),) = killed
    wait_until(lambda: not alive(pid), timeout=10, what="the killed worker to be gone")
    assert scan.pipeline.wait_catalogued(uid, timeout=120), state(bus.client, uid)
    final = state(bus.client, uid)
    assert int(final["attempt"]) == 2
    if peer:
        assert final["worker"] != name
    else:
        assert final["worker"] == name
        assert worker_pid(bus, name) != pid  # a new process under the same name
    assert_written_once(bus, uid, scan.points)
    scan.pipeline.close()


def test_redis_killed_and_restarted_mid_scan_loses_nothing(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    bus.workers.start("post-processing-1")
    bus.workers.start("post-processing-2")
    scan = Scan(bus)
    scan.inject(lambda: len(scan.points) > POINTS // 4, bus.redis.kill, "a quarter of the scan")
    restarted = scan.inject(
        lambda: len(scan.points) > POINTS // 2 and bus.redis.process and bus.redis.process.poll() is not None,
        bus.redis.start, "half the scan, with Redis down",
    )  # fmt: skip
    uid = scan.run()
    restarted.join(timeout=60)
    assert not scan.errors, scan.errors
    # The RunEngine went on while Redis was down: its documents waited in the publisher.
    assert any("Redis unreachable" in record.getMessage() for record in caplog.records)
    assert scan.pipeline.wait_catalogued(uid, timeout=120), state(bus.client, uid)
    assert_written_once(bus, uid, scan.points)
    scan.pipeline.close()


def test_tiled_killed_mid_run_the_file_is_written_and_the_catalog_completed_when_tiled_is_back(bus: Bus) -> None:
    bus.workers.start("post-processing-1")
    scan = Scan(bus)
    fault = scan.inject(scan.processing, bus.tiled.kill, "a worker writing the run")
    uid = scan.run()
    fault.join(timeout=120)
    assert not scan.errors, scan.errors
    # The file is complete while Tiled is down; the run waits for the catalog.
    pending = wait_status(bus.client, uid, (CATALOG_PENDING,))
    status, in_file = hdf5_points(Path(pending["hdf5"]))
    assert status == "success"
    assert in_file == scan.points
    assert not scan.pipeline.wait_catalogued(uid, timeout=5)  # answered at once: the file is there
    bus.tiled.start()
    wait_status(bus.client, uid, (DONE,))
    assert_written_once(bus, uid, scan.points)
    scan.pipeline.close()


@pytest.fixture
def small_data_dir(bus: Bus) -> Iterator[Path]:
    """The data directory on a 1 MiB tmpfs (root only; skipped where mounting is refused)."""
    data = bus.config.data_dir
    data.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_full_data_directory_keeps_the_run_on_the_bus_until_replayed(bus: Bus, small_data_dir: Path) -> None:
    filler = small_data_dir / "filler"
    with filler.open("wb") as f:  # all but a few kB of the disk
        f.write(b"\0" * (1024 * 1024 - 16 * 1024))
    bus.workers.start("post-processing-1")
    scan = Scan(bus)
    uid = scan.run()
    assert not scan.pipeline.wait_catalogued(uid, timeout=120)
    failed = state(bus.client, uid)
    assert failed["status"] == FAILED
    assert "No space left on device" in failed["reason"], failed["reason"]
    # Reported as embedded mode reports it: incomplete, with what the file holds and why.
    summary = scan.pipeline.summaries.runs[uid]
    assert summary.status == "incomplete", summary
    assert summary.points == int(failed["points"]) < POINTS
    assert summary.measured_points == POINTS
    outcome = json.loads(failed["outcome"])
    assert outcome["file_complete"] is False
    assert summary.tiled == outcome["tiled"]  # the catalog has the run whole: not the file's fault
    assert "No space left on device" in summary.reason
    assert bus.client.exists(BusKeys().run(uid))  # its documents wait on the bus
    assert bus.client.hexists(BusKeys().failed, uid)

    filler.unlink()
    assert replay(bus.config) == [uid]
    wait_status(bus.client, uid, (DONE,))
    assert_written_once(bus, uid, scan.points)
    scan.pipeline.close()
