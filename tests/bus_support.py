"""Real servers for the document-bus tests: Redis and Tiled that can be killed and
restarted on the same port and data, and post-processing worker processes."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import redis
from bluesky import plans as bp
from ophyd.sim import SynSignal

from orchestrion.bus import BusKeys, read_state

from .support import free_port, stop_process, wait_until

TILED = Path(sys.executable).with_name("tiled")


@dataclass
class RedisServer:
    """redis-server with its append-only file written on every change, as the stack runs it."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "redis.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_until(self.ping, timeout=20, what="redis-server")

    def ping(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)


@dataclass
class TiledServer:
    """`tiled serve catalog` with file and SQL table storage (or ``catalog_uri``)."""

    root: Path
    catalog_uri: str | None = None
    port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def detectors(self) -> Path:
        """Readable storage of the server: where tests' detectors write their files."""
        return self.root / "detectors"

    def start(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.detectors.mkdir(parents=True, exist_ok=True)
        log = (self.root / "tiled.log").open("ab")
        catalog = self.catalog_uri or str(self.root / "catalog.db")
        self.process = subprocess.Popen(
            [str(TILED), "serve", "catalog", catalog, "--init", "-w", str(self.root / "data"),
             "-w", f"sqlite:///{self.root / 'tables.db'}", "-r", str(self.detectors), "--api-key", self.api_key,
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_until(self.answers, timeout=120, what="the tiled server")

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"tiled exited: {(self.root / 'tiled.log').read_text()[-2000:]}")
        return httpx.get(f"{self.uri}/api/v1/", timeout=1).status_code == 200

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)

    def client(self) -> Any:
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)


def bus_env(home: Path, redis_server: RedisServer, tiled: TiledServer | None, **extra: str) -> dict[str, str]:
    """ORCHESTRION_* settings of the test's bus, for this process and the workers."""
    env = {
        "ORCHESTRION_HOME": str(home),
        "ORCHESTRION_BUS_REDIS_URL": redis_server.url,
        "ORCHESTRION_BUS_CLAIM_IDLE": "1.0",
        "ORCHESTRION_POST_PROCESSING_NICENESS": "0",
        "ORCHESTRION_BUS_CONNECTORS": '["logbook"]',
    }
    if tiled is None:
        env["ORCHESTRION_TILED_ENABLED"] = "false"
    else:
        env["ORCHESTRION_TILED_URI"] = tiled.uri
        env["ORCHESTRION_TILED_API_KEY"] = tiled.api_key
    env.update(extra)
    return env


class Workers:
    """Post-processing worker processes (``python -m orchestrion.bus worker``)."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, {**os.environ, **env}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *, wait_ready: bool = True) -> subprocess.Popen[bytes]:
        """Start the worker; with ``wait_ready``, return once its heartbeat says it is ready
        (its imports done: it takes runs at full speed from then on)."""
        log = (self.home / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrion.bus", "worker", "--name", name],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.processes[name] = process
        if wait_ready:
            wait_until(lambda: self.ready(name), timeout=120, what=f"worker {name} ready")
        return process

    def ready(self, name: str) -> bool:
        client = redis.Redis.from_url(self.env["ORCHESTRION_BUS_REDIS_URL"], socket_timeout=2)
        try:
            beat = client.get(BusKeys().worker(name))
        finally:
            client.close()
        return beat is not None and bool(json.loads(beat).get("ready"))

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                stop_process(process)


def counter_detector() -> SynSignal:
    """A detector whose readings count 0, 1, 2, ...: a lost or doubled point shows."""
    counter = itertools.count()
    return SynSignal(func=lambda: float(next(counter)), name="det")


def count_plan(points: int, delay: float) -> Iterator[Any]:
    return bp.count([counter_detector()], num=points, delay=delay)  # type: ignore[no-any-return]


def state(client: redis.Redis, run_uid: str) -> dict[str, str]:
    return read_state(client, BusKeys().state(run_uid))


def wait_status(client: redis.Redis, run_uid: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, str]:
    return wait_until(
        lambda: (s := state(client, run_uid)).get("status") in statuses and s,
        timeout=timeout, interval=0.05, what=f"run {run_uid} to be {statuses}",
    )  # fmt: skip


def run_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("*.h5"))


def hdf5_points(path: Path) -> tuple[str, list[float]]:
    """(status, the det readings in /entry/data, in order)."""
    with h5py.File(path, "r") as f:
        status = f["entry/status"][()].decode()
        values = np.asarray(f["entry/data/det"][()]).tolist()
    return status, values


def tiled_points(tiled: TiledServer, run_uid: str) -> tuple[dict[str, Any], list[float]]:
    """(the run's stop document, the det readings of its bundled stream)."""
    client = tiled.client()
    try:
        run = client[run_uid]
        values = run["bundled"].read()["det"].values.tolist()
        return dict(run.metadata.get("stop") or {}), values
    finally:
        client.context.close()
