"""A supervised process: started in its own session, with a pid file, a log and a health check.

Nothing here knows which programs the stack runs (that is `_stack.py`): a
`SupervisedProcess` is any command that should keep running in the background, survive
the shell that started it, and be found again by a later `orchestrion` command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrion.addresses import run_dir
from orchestrion.config import OrchestrionConfig
from orchestrion.errors import OrchestrionError
from orchestrion.processes import alive, death, describe, listener, port_taken

logger = logging.getLogger(__name__)

HealthCheck = Callable[[OrchestrionConfig], tuple[bool, str]]


def no_ports(config: OrchestrionConfig) -> tuple[int, ...]:
    return ()


class ServiceError(OrchestrionError):
    """A service that cannot be started or stopped; the message names it and its log."""


class Degraded(Exception):
    """Raised by a health check: the service answers, but a part of it is broken (the detail says which).

    `status` reports it 'degraded'; `up` counts it as started, so the services that
    repair it (the scheduler, for a dead queue-server worker) can start.
    """


@dataclass
class ServiceStatus:
    """What `orchestrion status` reports for one service."""

    name: str
    pid: int | None
    address: str
    health: str  # "ok", "degraded", "unhealthy" or "down"
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SupervisedProcess:
    """How to start, check, find again and stop one background process."""

    name: str
    marker: str  # a word of its command line: tells our process from a recycled pid
    address: Callable[[OrchestrionConfig], str]
    command: Callable[[OrchestrionConfig], list[str]]
    check: HealthCheck
    start_timeout: float = 60.0
    stop_timeout: float = 30.0
    ports: Callable[[OrchestrionConfig], tuple[int, ...]] = no_ports  #: the TCP ports it listens on

    def pid_file(self, config: OrchestrionConfig) -> Path:
        return run_dir(config) / f"{self.name}.pid"

    def log_file(self, config: OrchestrionConfig) -> Path:
        return run_dir(config) / f"{self.name}.log"

    def pid(self, config: OrchestrionConfig) -> int | None:
        """The pid of this service's live process, or None.

        A stale pid file stays until the next start (`clear_leftovers`): it names the
        process group whose leftovers may still hold the service's ports.
        """
        try:
            pid = int(self.pid_file(config).read_text().strip())
        except (OSError, ValueError):
            return None
        for _ in range(3):
            if alive(pid, self.marker):
                return pid
            if not alive(pid, None):
                return None
            time.sleep(0.02)  # a process rewriting its title (Redis) may read blank for a moment
        return None  # a live process, but not ours: the pid was recycled

    def death(self, config: OrchestrionConfig) -> str:
        """How the process of the pid file ended ('killed by SIGKILL'), as far as can be told."""
        try:
            pid = int(self.pid_file(config).read_text().strip())
        except (OSError, ValueError):
            return "no pid file"
        return f"pid {pid} {death(pid) or 'is not ours'}"

    def clear_leftovers(self, config: OrchestrionConfig) -> None:
        """Kill what is left of a dead instance: its process group, and its pid file.

        A service is started in a session of its own, so its children (the queue server's
        manager and worker) are in its process group: when its first process dies they
        live on, holding its ports, unless they are ended here before a new start.
        """
        try:
            pid = int(self.pid_file(config).read_text().strip())
        except (OSError, ValueError):
            return
        if alive(pid, self.marker):
            return
        # Only a dead pid (gone, or a zombie) is safe to kill as a group: Linux gives no new
        # process the number of a group that still has members; a live stranger is not ours.
        if death(pid) is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                logger.warning("%s: killed what was left of its process group %d", self.name, pid)
        _reap(pid)
        with contextlib.suppress(OSError):
            self.pid_file(config).unlink()

    def status(self, config: OrchestrionConfig) -> ServiceStatus:
        pid = self.pid(config)
        if pid is None:
            return ServiceStatus(self.name, None, self.address(config), "down")
        stranger = self.stranger_on_port(config, pid)
        if stranger is not None:
            return ServiceStatus(self.name, pid, self.address(config), "unhealthy", stranger)
        try:
            ok, detail = self.check(config)
        except Degraded as exc:
            return ServiceStatus(self.name, pid, self.address(config), "degraded", str(exc))
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        return ServiceStatus(self.name, pid, self.address(config), "ok" if ok else "unhealthy", detail)

    def stranger_on_port(self, config: OrchestrionConfig, pid: int | None) -> str | None:
        """Which of its ports another process answers on (not ``pid``'s process group); None if none.

        A health check asks the port, so it must be this service that answers there, not an
        orphan of an earlier start or another program.
        """
        for port in self.ports(config):
            owner = listener(port)
            if owner is None:
                if pid is None and port_taken(port):
                    return f"port {port} is taken by another process"
                continue
            try:
                group = os.getpgid(owner)
            except OSError:
                continue
            if pid is None or group != pid:
                return f"port {port} is taken by {describe(owner)}"
        return None

    # -- starting --------------------------------------------------------------------------

    def start(self, config: OrchestrionConfig, env: Mapping[str, str]) -> int:
        """Start the process in a session of its own (it outlives this one); its pid.

        Refused (`ServiceError`) if something else already listens on one of its ports.
        """
        taken = self.stranger_on_port(config, None)
        if taken is not None:
            raise ServiceError(f"{self.name} cannot start: {taken}; stop it or configure another port")
        log = self.log_file(config)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            process = subprocess.Popen(
                self.command(config), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env=dict(env), cwd=run_dir(config), start_new_session=True,
            )  # fmt: skip
        _children[process.pid] = process
        self.pid_file(config).write_text(f"{process.pid}\n")
        logger.info("started %s (pid %d), log %s", self.name, process.pid, log)
        return process.pid

    def poll_started(self, config: OrchestrionConfig, pid: int, deadline: float) -> ServiceStatus | None:
        """One look at a process being started: its status once healthy, None while not yet.

        Raises `ServiceError` if it exited, or is still not healthy at ``deadline``
        (a `time.monotonic` time).
        """
        # No marker check: the pid is the child just started, whatever it calls itself.
        if not alive(pid, None):
            raise ServiceError(f"{self.name} exited while starting: see {self.log_file(config)}{self.log_tail(config)}")
        status = self.status(config)
        if status.health in ("ok", "degraded"):
            return status
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{self.name} did not become healthy in {self.start_timeout:.0f} s ({status.detail}): "
                f"see {self.log_file(config)}"
            )
        return None

    def log_tail(self, config: OrchestrionConfig, lines: int = 5) -> str:
        """The last lines of the log, indented, for an error message."""
        try:
            tail = self.log_file(config).read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return ("\n  " + "\n  ".join(tail)) if tail else ""

    # -- stopping --------------------------------------------------------------------------

    def stop(self, config: OrchestrionConfig) -> None:
        """SIGTERM, then SIGKILL of its process group after ``stop_timeout``; idempotent."""
        pid = self.pid(config)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while alive(pid, self.marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid, self.marker):
            logger.warning("%s (pid %d) ignored SIGTERM: killing its process group", self.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the session this supervisor started for it
        # Children (the queue server's worker) share the service's process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        _reap(pid)
        with contextlib.suppress(OSError):
            self.pid_file(config).unlink()
        logger.info("stopped %s (pid %d)", self.name, pid)


# Processes this interpreter started, kept so that they are waited for (no zombies, and
# no ResourceWarning from a collected Popen of a live child).
_children: dict[int, subprocess.Popen[bytes]] = {}


def reap_exited_children() -> None:
    """Wait for this interpreter's children that have ended by themselves: a service that
    died (killed, say) and was started again by the keeper has a new pid, so its first
    process would otherwise stay a zombie, its `Popen` unwaited for."""
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            _children.pop(pid, None)


def _reap(pid: int) -> None:
    process = _children.pop(pid, None)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)
