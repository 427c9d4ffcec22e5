"""`orchestrion up`, `down` and `status`: the lab's services as supervised processes.

Each service is one process (group) started in its own session, with a pid file and a
log under `$ORCHESTRION_HOME/run/`.  `up` starts what is not running and waits until
each answers; `down` stops what runs, in reverse order; both are idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from orchestrion.config import OrchestrionConfig
from orchestrion.errors import OrchestrionError

from ._addresses import (
    HOST,
    api_url,
    close_api,
    queue_server_api,
    redis_address,
    redis_name_prefix,
    run_dir,
    tiled_api_key,
    tiled_uri,
    zmq_control_address,
    zmq_info_address,
)

logger = logging.getLogger(__name__)


class ServiceError(OrchestrionError):
    """A service that cannot be started or stopped; the message names it and its log."""


@dataclass
class ServiceStatus:
    """What `orchestrion status` reports for one service."""

    name: str
    pid: int | None
    address: str
    health: str  # "ok", "down", or "unhealthy"
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Service:
    """How to start, check and name one process of the stack."""

    name: str
    marker: str  # a word of its command line: tells our process from a recycled pid
    address: Callable[[OrchestrionConfig], str]
    command: Callable[[OrchestrionConfig], list[str]]
    check: Callable[[OrchestrionConfig], tuple[bool, str]]
    start_timeout: float = 60.0

    def pid_file(self, config: OrchestrionConfig) -> Path:
        return run_dir(config) / f"{self.name}.pid"

    def log_file(self, config: OrchestrionConfig) -> Path:
        return run_dir(config) / f"{self.name}.log"

    def pid(self, config: OrchestrionConfig) -> int | None:
        """The pid of this service's live process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file(config).read_text().strip())
        except (OSError, ValueError):
            return None
        for _ in range(3):
            if _alive(pid, self.marker):
                return pid
            if not _alive(pid, None):
                with contextlib.suppress(OSError):
                    self.pid_file(config).unlink()
                return None
            time.sleep(0.02)  # a process rewriting its title (Redis) may read blank for a moment
        return None  # a live process, but not ours: the pid was recycled

    def status(self, config: OrchestrionConfig) -> ServiceStatus:
        pid = self.pid(config)
        if pid is None:
            return ServiceStatus(self.name, None, self.address(config), "down")
        try:
            ok, detail = self.check(config)
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        return ServiceStatus(self.name, pid, self.address(config), "ok" if ok else "unhealthy", detail)


def _alive(pid: int, marker: str | None) -> bool:
    """Is ``pid`` a live process (whose command line mentions ``marker``, if given)?"""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state != "Z" and (marker is None or marker in cmdline)


def _executable(name: str) -> str:
    # The venv's own console scripts first: `orchestrion` may run without activation.
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        hint = " (install it with `make system-deps`)" if name == "redis-server" else ""
        raise ServiceError(f"cannot find the program '{name}'{hint}")
    return found


# -- the services -------------------------------------------------------------------------


def _redis_command(config: OrchestrionConfig) -> list[str]:
    data = run_dir(config) / "redis"
    data.mkdir(parents=True, exist_ok=True)
    return [
        _executable("redis-server"), "--bind", HOST, "--port", str(config.redis_port),
        "--protected-mode", "yes", "--dir", str(data), "--daemonize", "no",
        # Persistence: every queue change is in the append-only file before Redis answers,
        # plus periodic snapshots.  An accepted job survives `down`, a crash or a reboot.
        "--appendonly", "yes", "--appendfsync", "always", "--save", "60 1",
    ]  # fmt: skip


def _redis_check(config: OrchestrionConfig) -> tuple[bool, str]:
    import redis

    client = redis.Redis(host=HOST, port=config.redis_port, socket_timeout=2.0)
    try:
        client.ping()
        persistence = client.config_get("appendonly").get("appendonly", "?")
    finally:
        client.close()
    return True, f"appendonly {persistence}"


def tiled_paths(config: OrchestrionConfig) -> tuple[Path, Path, Path]:
    """(catalog database, file storage, table storage) of the served catalog."""
    base = config.home / "tiled"
    return base / "catalog.db", base / "data", base / "tables.db"


def _tiled_command(config: OrchestrionConfig) -> list[str]:
    catalog, data, tables = tiled_paths(config)
    data.mkdir(parents=True, exist_ok=True)
    # Through the redacting wrapper: tiled prints its URL with the API key.
    return [
        sys.executable, "-m", "orchestrion.services._redact",
        _executable("tiled"), "serve", "catalog", str(catalog), "--init", "-w", str(data),
        "-w", f"sqlite:///{tables}", "--host", HOST, "--port", str(config.tiled_port),
    ]  # fmt: skip


def _tiled_check(config: OrchestrionConfig) -> tuple[bool, str]:
    import httpx

    response = httpx.get(f"{tiled_uri(config)}/api/v1/", timeout=2.0)
    return response.status_code == 200, f"HTTP {response.status_code}"


def _manager_command(config: OrchestrionConfig) -> list[str]:
    profile = config.profile_dir.resolve()
    return [
        _executable("start-re-manager"), "--startup-dir", str(profile),
        # The checked-in list is the contract (tests keep it in step with the library):
        # the worker must not rewrite files in the source tree.
        "--existing-plans-devices", str(profile / "existing_plans_and_devices.yaml"),
        "--update-existing-plans-devices", "NEVER",
        "--user-group-permissions", str(profile / "user_group_permissions.yaml"),
        "--user-group-permissions-reload", "ON_STARTUP",
        # Both 0MQ sockets on loopback: the defaults bind every interface.
        "--zmq-control-addr", zmq_control_address(config), "--zmq-info-addr", zmq_info_address(config),
        "--zmq-publish-console", "ON",
        "--redis-addr", redis_address(config), "--redis-name-prefix", redis_name_prefix(config),
    ]  # fmt: skip


def _manager_check(config: OrchestrionConfig) -> tuple[bool, str]:
    api = queue_server_api(config, timeout=2.0)
    try:
        status = api.status(reload=True)
    finally:
        close_api(api)
    environment = "open" if status["worker_environment_exists"] else "closed"
    detail = (
        f"manager {status['manager_state']}, environment {environment}, "
        f"{status['items_in_queue']} queued, {status['items_in_history']} in history"
    )
    return True, detail


def _scheduler_command(config: OrchestrionConfig) -> list[str]:
    return [sys.executable, "-m", "orchestrion.jobs"]


def _scheduler_check(config: OrchestrionConfig) -> tuple[bool, str]:
    from orchestrion.jobs import read_heartbeat

    beat = read_heartbeat(config)
    if beat is None:
        return False, "no heartbeat yet"
    age = time.time() - float(beat.get("heartbeat", 0.0))
    return age < 5.0, f"heartbeat {age:.1f} s ago"


# API server (orchestrion.api): bluesky-httpserver with Orchestrion's router, after the
# queue server it fronts; `health` answers without a key.
def _api_command(config: OrchestrionConfig) -> list[str]:
    return [sys.executable, "-m", "orchestrion.api"]


def _api_check(config: OrchestrionConfig) -> tuple[bool, str]:
    import httpx

    verify = str(config.api_tls_certfile) if config.api_tls_certfile is not None else True
    response = httpx.get(f"{api_url(config)}/api/orchestrion/health", timeout=2.0, verify=verify)
    return response.status_code == 200, f"HTTP {response.status_code}"


SERVICES: tuple[Service, ...] = (
    Service("redis", "redis-server", redis_address, _redis_command, _redis_check, 30.0),
    Service("tiled", "tiled", tiled_uri, _tiled_command, _tiled_check, 120.0),
    Service("queue-server", "start-re-manager", zmq_control_address, _manager_command, _manager_check, 60.0),
    Service(
        "scheduler", "orchestrion.jobs", lambda c: str(run_dir(c) / "scheduler.json"),
        _scheduler_command, _scheduler_check, 60.0,
    ),
    Service("api", "orchestrion.api", api_url, _api_command, _api_check, 60.0),
)  # fmt: skip


def service(name: str) -> Service:
    for candidate in SERVICES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


# -- environment for the processes ---------------------------------------------------------


def service_environment(config: OrchestrionConfig) -> dict[str, str]:
    """The environment of the stack's processes: this configuration, spelled as variables.

    The worker and the scheduler then load exactly the configuration `up` was given.
    Secrets travel only here, never on a command line (which `ps` shows) or in a file.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRION_")}
    for name, value in config:
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list | tuple | dict):
            value = json.dumps(value)  # how pydantic-settings reads complex values
        env[f"ORCHESTRION_{name.upper()}"] = str(value)
    key = tiled_api_key(config, create=True)
    assert key is not None
    env["TILED_SINGLE_USER_API_KEY"] = key  # the server's key
    env["TILED_API_KEY"] = key  # what tiled clients in the worker present
    env["ORCHESTRION_TILED_API_KEY"] = key
    # The worker's pipeline catalogues runs through the stack's Tiled server (the same
    # catalog files the embedded mode opens), unless the lab names another server.
    env.setdefault("ORCHESTRION_TILED_URI", tiled_uri(config))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# -- up, down, status ----------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(config: OrchestrionConfig) -> Iterator[None]:
    """One `up` or `down` at a time per home."""
    path = run_dir(config) / "supervisor.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _spawn(svc: Service, config: OrchestrionConfig, env: dict[str, str]) -> int:
    log = svc.log_file(config)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        process = subprocess.Popen(
            svc.command(config), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            env=env, cwd=run_dir(config), start_new_session=True,
        )  # fmt: skip
    _children[process.pid] = process
    svc.pid_file(config).write_text(f"{process.pid}\n")
    logger.info("started %s (pid %d), log %s", svc.name, process.pid, log)
    return process.pid


def _wait_healthy(svc: Service, config: OrchestrionConfig, pid: int) -> ServiceStatus:
    deadline = time.monotonic() + svc.start_timeout
    while True:
        # No marker check: the pid is the child just started, whatever it calls itself.
        if not _alive(pid, None):
            raise ServiceError(f"{svc.name} exited while starting: see {svc.log_file(config)}{_log_tail(svc, config)}")
        status = svc.status(config)
        if status.health == "ok":
            return status
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{svc.name} did not become healthy in {svc.start_timeout:.0f} s ({status.detail}): "
                f"see {svc.log_file(config)}"
            )
        time.sleep(0.1)


def _log_tail(svc: Service, config: OrchestrionConfig, lines: int = 5) -> str:
    try:
        tail = svc.log_file(config).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("\n  " + "\n  ".join(tail)) if tail else ""


def up(config: OrchestrionConfig) -> list[ServiceStatus]:
    """Start every service that is not running, open the worker environment; idempotent."""
    with _exclusive(config):
        env = service_environment(config)
        pids: dict[str, int] = {}
        started: list[str] = []

        def ensure(svc: Service) -> None:
            pid = svc.pid(config)
            if pid is None:
                pid = _spawn(svc, config, env)
                started.append(svc.name)
            pids[svc.name] = pid

        redis_svc, tiled_svc, manager_svc, scheduler_svc, api_svc = SERVICES
        try:
            ensure(tiled_svc)  # the slowest to start: it imports while the others come up
            ensure(redis_svc)
            _wait_healthy(redis_svc, config, pids["redis"])
            ensure(manager_svc)
            _wait_healthy(manager_svc, config, pids["queue-server"])
            _open_environment(config)
            _wait_healthy(tiled_svc, config, pids["tiled"])
            ensure(scheduler_svc)
            ensure(api_svc)
            _wait_healthy(scheduler_svc, config, pids["scheduler"])
            _wait_healthy(api_svc, config, pids["api"])
        except BaseException:
            # Leave nothing half-started behind: stop what this call started.
            for name in reversed(started):
                _stop(service(name), config)
            raise
        return [svc.status(config) for svc in SERVICES]


def _open_environment(config: OrchestrionConfig) -> None:
    from orchestrion.jobs import Scheduler

    scheduler = Scheduler(config)
    try:
        scheduler.prepare()
    except Exception as exc:
        raise ServiceError(
            f"the queue server's worker environment did not open ({exc}): "
            f"see {service('queue-server').log_file(config)}"
        ) from None
    finally:
        scheduler.close()


def down(config: OrchestrionConfig, *, force: bool = False) -> list[ServiceStatus]:
    """Stop every running service, scheduler first; idempotent.

    Refuses while a job runs (its item would come back at the front of the queue on the
    next `up`), unless ``force``.
    """
    with _exclusive(config):
        manager = service("queue-server")
        if not force and manager.pid(config) is not None:
            try:
                state = _manager_state(config)
            except Exception:
                state = None
            if state in ("executing_queue", "paused", "executing_task"):
                raise ServiceError(
                    f"a job is {'paused' if state == 'paused' else 'running'}: wait for it, cancel it, "
                    "or use `orchestrion down --force`"
                )
        for svc in reversed(SERVICES):
            _stop(svc, config)
        return [svc.status(config) for svc in SERVICES]


def _manager_state(config: OrchestrionConfig) -> str:
    api = queue_server_api(config, timeout=2.0)
    try:
        return str(api.status(reload=True)["manager_state"])
    finally:
        close_api(api)


def _stop(svc: Service, config: OrchestrionConfig, timeout: float = 30.0) -> None:
    pid = svc.pid(config)
    if pid is None:
        return
    if svc.name == "queue-server":
        _close_environment(config)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid, svc.marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid, svc.marker):
        logger.warning("%s (pid %d) ignored SIGTERM: killing its process group", svc.name, pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the session this supervisor started for it
    # Children (the queue server's worker) share the service's process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    _reap(pid)
    with contextlib.suppress(OSError):
        svc.pid_file(config).unlink()
    logger.info("stopped %s (pid %d)", svc.name, pid)


# Processes this interpreter started, kept so that they are waited for (no zombies, and
# no ResourceWarning from a collected Popen of a live child).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    process = _children.pop(pid, None)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)


def _close_environment(config: OrchestrionConfig) -> None:
    """Close the worker environment cleanly so the RunEngine and devices shut down."""
    try:
        api = queue_server_api(config, timeout=2.0)
        try:
            status = api.status(reload=True)
            if status["worker_environment_exists"]:
                if status["manager_state"] == "idle":
                    api.environment_close()
                else:
                    api.environment_destroy()
                api.wait_for_condition(lambda s: not s["worker_environment_exists"], timeout=20.0)
        finally:
            close_api(api)
    except Exception as exc:  # a hung manager still gets its SIGTERM
        logger.warning("could not close the worker environment: %s", exc)


def stop_service(config: OrchestrionConfig, name: str) -> None:
    """Stop one service (the others keep running); `up` starts it again."""
    with _exclusive(config):
        _stop(service(name), config)


def status(config: OrchestrionConfig) -> list[ServiceStatus]:
    """Each service with its pid, address and health."""
    return [svc.status(config) for svc in SERVICES]
