"""The API server process alone (no queue server needed for these): TLS, the admin key, body limits, config."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrion.api import Role, RoleFile, httpserver_configuration, uvicorn_options, without_credentials
from orchestrion.config import load_config
from orchestrion.errors import InputError

from .support import free_port, stop_process, wait_until


def trust(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl (as a lab would)."""
    cert, key = directory / "api.crt", directory / "api.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def api_server(tmp_path: Path, **settings: str) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`python -m orchestrion.api` alone (nothing listens on its queue-server ports: these
    tests need only the HTTP side), in a fresh home; its process, port and home."""
    home = tmp_path / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRION_")}
    env.update(
        ORCHESTRION_HOME=str(home), ORCHESTRION_API_PORT=str(port),
        ORCHESTRION_ZMQ_CONTROL_PORT=str(free_port()), ORCHESTRION_ZMQ_INFO_PORT=str(free_port()), **settings,
    )  # fmt: skip
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "orchestrion.api"], env=env, stdout=log, stderr=log)
        try:
            yield process, port, home
        finally:
            stop_process(process)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    cert, key = self_signed(tmp_path)
    tls = {"ORCHESTRION_API_TLS_CERTFILE": str(cert), "ORCHESTRION_API_TLS_KEYFILE": str(key)}
    with api_server(tmp_path, ORCHESTRION_API_MAX_BODY_BYTES="2048", **tls) as (_, port, home):
        url = f"https://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{url}/api/orchestrion/health", verify=trust(cert), timeout=2).status_code == 200,
            timeout=90, what="the API server over TLS",
        )  # fmt: skip
        yield url, cert, home


def test_the_server_serves_tls_makes_an_admin_key_0600_and_limits_bodies(tls_server: tuple[str, Path, Path]) -> None:
    url, cert, home = tls_server
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https", "http") + "/api/orchestrion/health", timeout=5)  # no plain HTTP
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/api/orchestrion/health", timeout=5)  # an unknown certificate is refused
    key_file = home / "run" / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    headers = {"Authorization": f"Apikey {key}"}
    who = httpx.get(f"{url}/api/orchestrion/whoami", headers=headers, verify=trust(cert), timeout=10).json()
    assert (who["name"], who["role"]) == ("admin", "admin")
    big = httpx.post(
        f"{url}/api/orchestrion/jobs", content=b"x" * 4096, headers=headers, verify=trust(cert), timeout=10
    )
    assert big.status_code == 413
    assert "body" in big.json()["detail"]
    log = (home.parent / "api.log").read_text(errors="replace")
    assert key not in log


def test_the_configuration_keeps_everything_on_loopback_unless_told(tmp_path: Path) -> None:
    config = load_config(home=tmp_path / "home")
    assert uvicorn_options(config)["host"] == "127.0.0.1"
    settings = httpserver_configuration(config)
    assert settings["qserver_zmq_configuration"]["control_address"].startswith("tcp://127.0.0.1:")
    routers = settings["server_configuration"]["custom_routers"]
    assert routers == ["orchestrion.api.router", "orchestrion.api.tiled_router"]
    with pytest.raises(InputError, match="api_tls_keyfile"):
        uvicorn_options(config.model_copy(update={"api_tls_certfile": tmp_path / "c.pem"}))


def test_a_name_keeps_its_first_role(tmp_path: Path) -> None:
    roles = RoleFile(tmp_path / "roles.json")
    roles.assign("alice", Role.USER)
    roles.assign("alice", Role.USER)
    with pytest.raises(InputError, match="already holds the role 'user'"):
        roles.assign("alice", Role.ADMIN)
    assert roles.roles() == {"alice": Role.USER}
    assert (tmp_path / "roles.json").stat().st_mode & 0o777 == 0o600


def test_addresses_in_the_stack_status_carry_no_credentials() -> None:
    assert without_credentials("redis://:s3cret@bus-host:6379/0") == "redis://bus-host:6379/0"
    assert without_credentials("http://user:pw@influx:8086") == "http://influx:8086"
    assert without_credentials("tcp://127.0.0.1:60615") == "tcp://127.0.0.1:60615"
    assert without_credentials("embedded (SQLite)") == "embedded (SQLite)"


def test_sigterm_stops_the_server_while_a_live_stream_is_open(tmp_path: Path) -> None:
    """A GUI left open (its live stream) kept uvicorn waiting for the response to end: the
    stack's stop waited its 30 s and killed the server."""
    with api_server(tmp_path) as (process, port, home):
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{url}/api/orchestrion/health", timeout=2).status_code == 200,
            timeout=90, what="the API server",
        )  # fmt: skip
        headers = {"Authorization": f"ApiKey {(home / 'run' / 'api-key').read_text().strip()}"}
        with httpx.stream("GET", f"{url}/api/orchestrion/live", headers=headers, timeout=30) as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: hello"
            process.send_signal(signal.SIGTERM)
            rest = list(lines)  # the stream ends: the server closed it
        # uvicorn re-raises the signal it handled once it has stopped: killed by it, cleanly.
        assert process.wait(timeout=15) == -signal.SIGTERM
        assert not any(line.startswith("event: points") for line in rest)
    assert "timeout graceful shutdown exceeded" not in (tmp_path / "api.log").read_text()
