"""A lab's Tiled catalog in PostgreSQL (`tiled_catalog_uri`): a real server from Debian's
packages, run as an unprivileged user on a free loopback port, written by a worker."""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from bluesky import RunEngine

from orchestrion.bus import DONE, build_bus_pipeline
from orchestrion.config import load_config

from .bus_support import RedisServer, TiledServer, Workers, bus_env, count_plan, hdf5_points, state, tiled_points
from .support import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.stack]

USER = "postgres"  # Debian's unprivileged account for the server


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        pytest.skip(f"PostgreSQL's {name} is not installed (make system-deps)")
    return found[-1]


def _as_user(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", USER, "--", *command], capture_output=True, text=True, check=True)


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server in a temporary directory; yields the catalog database's URI."""
    root = Path(tempfile.mkdtemp(prefix="orchestrion-pg-"))
    shutil.chown(root, USER)
    data, port = root / "data", free_port()
    _as_user(_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "orchestrion")
    _as_user(_bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
             "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")  # fmt: skip
    try:
        _as_user(_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "orchestrion", "tiled")
        yield f"postgresql+asyncpg://orchestrion@127.0.0.1:{port}/tiled"
    finally:
        subprocess.run(["runuser", "-u", USER, "--", _bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_a_worker_catalogues_runs_in_a_tiled_catalog_kept_in_postgresql(
    postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_server, tiled = RedisServer(tmp_path / "redis"), TiledServer(tmp_path / "tiled", catalog_uri=postgres)
    redis_server.start()
    tiled.start()
    home = tmp_path / "home"
    home.mkdir()
    env = bus_env(home, redis_server, tiled, ORCHESTRION_TILED_CATALOG_URI=postgres)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    workers = Workers(home, env)
    client = redis.Redis.from_url(redis_server.url)
    try:
        workers.start("post-processing-1")
        RE = RunEngine({}, call_returns_result=True)
        pipeline = build_bus_pipeline(load_config())
        pipeline.subscribe(RE)
        points: list[float] = []
        RE.subscribe(lambda name, doc: points.append(doc["data"]["det"]) if name == "event" else None)
        uid = RE(count_plan(50, 0.0)).run_start_uids[0]
        assert pipeline.wait_catalogued(uid, timeout=180), state(client, uid)
        pipeline.close()
        final = state(client, uid)
        assert final["status"] == DONE
        assert hdf5_points(Path(final["hdf5"])) == ("success", points)
        stop, catalogued = tiled_points(tiled, uid)
        assert stop["exit_status"] == "success"
        assert catalogued == points
        # The run's node is a row of the PostgreSQL catalog.
        port = postgres.rsplit(":", 1)[1].split("/")[0]
        rows = _as_user(_bin("psql"), "-h", "127.0.0.1", "-p", port, "-U", "orchestrion", "-d", "tiled", "-tAc",
                        f"SELECT count(*) FROM nodes WHERE key = '{uid}'")  # fmt: skip
        assert rows.stdout.strip() == "1"
    finally:
        workers.stop()
        client.close()
        tiled.stop()
        redis_server.stop()
