"""A real influxd (Debian's 1.6.7) for tests: loopback only, data in a temporary directory.

Use `running_influxd(directory)` as a context manager, or import the session-wide
`influxd` fixture into a test module (`from tests.influx import influxd`): one server
for the whole run, so give each test a database of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, stop_process, wait_until

ADMIN_USER = "admin"


@dataclass(frozen=True)
class InfluxServer:
    """An influxd this test process started."""

    url: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None

    def query(self, text: str, database: str | None = None) -> Any:
        """Run InfluxQL over the v1 HTTP API (POST, so statements that write work)."""
        import json

        params = {"q": text}
        if database:
            params["db"] = database
        if self.username and self.password:
            params.update(u=self.username, p=self.password)
        request = urllib.request.Request(
            f"{self.url}/query", data=urllib.parse.urlencode(params).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def write_lines(self, database: str, lines: str, precision: str = "u") -> None:
        """Write raw line protocol, as another program (Telegraf, the influx CLI) would."""
        params = {"db": database, "precision": precision}
        if self.username and self.password:
            params.update(u=self.username, p=self.password)
        request = urllib.request.Request(
            f"{self.url}/write?{urllib.parse.urlencode(params)}", data=lines.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 204:
                raise RuntimeError(f"influxd refused the write: HTTP {response.status}")


def _config(directory: Path, http_port: int, rpc_port: int, auth: bool) -> str:
    # influxd fills in defaults for everything not named here; every address is loopback.
    return f"""
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{directory / "meta"}"

[data]
  dir = "{directory / "data"}"
  wal-dir = "{directory / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {"true" if auth else "false"}
  log-enabled = false
  pprof-enabled = false
  bind-socket = "{directory / "influxd.sock"}"

[continuous_queries]
  enabled = false

[logging]
  level = "warn"
"""


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=1) as response:
            return bool(response.status == 204)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def running_influxd(directory: Path, *, auth: bool = False, password: str = "s3cret-admin") -> Iterator[InfluxServer]:
    """Start influxd on free loopback ports with its data under ``directory``; stop it after.

    With ``auth``, HTTP authentication is on and an admin user ``admin`` exists.
    """
    executable = shutil.which("influxd")
    if executable is None:
        raise RuntimeError("influxd is not installed: run `make system-deps` (Debian package influxdb)")
    directory.mkdir(parents=True, exist_ok=True)
    port, rpc_port = free_port(), free_port()
    config_path = directory / "influxd.conf"
    config_path.write_text(_config(directory, port, rpc_port, auth))
    log = (directory / "influxd.log").open("wb")
    process = subprocess.Popen([executable, "-config", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _ping(url), timeout=30, what="influxd to answer /ping")
        if process.poll() is not None:
            raise RuntimeError(f"influxd exited: {(directory / 'influxd.log').read_text()[-2000:]}")
        server = InfluxServer(url=url, port=port, directory=directory, process=process)
        if auth:
            # With no users yet, influxd lets the first admin be created unauthenticated.
            server.query(f"CREATE USER {ADMIN_USER} WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
            server = InfluxServer(url, port, directory, process, ADMIN_USER, password)
        yield server
    finally:
        stop_process(process, timeout=15)
        log.close()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One influxd for the test session, stopped at its end."""
    with running_influxd(tmp_path_factory.mktemp("influxd")) as server:
        yield server
