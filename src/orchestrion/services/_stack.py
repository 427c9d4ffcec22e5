"""The stack's services and `orchestrion up`, `down` and `status`.

Each service is a `SupervisedProcess` with what the stack needs to know about it: the
services it requires (they are started, healthy and ready first), what to do once it
is healthy (`after_start`) and before it stops (`before_stop`), and what makes `down`
wait for it (`busy`).  `up` starts what is not running, in that order, overlapping
independent starts, and waits until each answers; `down` stops what runs in the
reverse order; both are idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from orchestrion.addresses import (
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
from orchestrion.config import OrchestrionConfig

# Not the scheduler's module at import: it imports the experiment layer (bluesky), and a
# listing asks `service('api').pid` here (ADR 0813).
from orchestrion.jobs import JobStatus, JobStore
from orchestrion.processes import death

from ._process import Degraded, ServiceError, ServiceStatus, SupervisedProcess, reap_exited_children

logger = logging.getLogger(__name__)

Hook = Callable[[OrchestrionConfig], None]


@dataclass(frozen=True)
class Service(SupervisedProcess):
    """One process of the stack, with its place among the others."""

    requires: tuple[str, ...] = ()  #: services that must be ready before this one starts
    after_start: Hook | None = None  #: once healthy, before the services that require it start
    before_stop: Hook | None = None  #: while it still runs, before it is sent SIGTERM
    busy: Callable[[OrchestrionConfig], str | None] | None = None  #: why `down` should not stop it now
    on_death: Callable[[OrchestrionConfig, str], None] | None = None  #: found dead, before it is restarted


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


# -- Redis ----------------------------------------------------------------------------------


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


# -- Tiled ----------------------------------------------------------------------------------


def tiled_paths(config: OrchestrionConfig) -> tuple[Path, Path, Path]:
    """(catalog database, file storage, table storage) of the served catalog."""
    base = config.home / "tiled"
    return base / "catalog.db", base / "data", base / "tables.db"


def _tiled_command(config: OrchestrionConfig) -> list[str]:
    _, data, _ = tiled_paths(config)
    data.mkdir(parents=True, exist_ok=True)
    # Served from a process of ours (no `tiled serve` wrapper): the pid is the server's.
    return [sys.executable, "-m", "orchestrion.services._tiled_server"]


def _tiled_check(config: OrchestrionConfig) -> tuple[bool, str]:
    import httpx

    response = httpx.get(f"{tiled_uri(config)}/api/v1/", timeout=2.0)
    return response.status_code == 200, f"HTTP {response.status_code}"


# -- the queue server -----------------------------------------------------------------------


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
    from orchestrion.jobs import read_worker_state

    worker = read_worker_state(config)
    pid = worker.get("pid") if worker is not None else None
    how = death(pid) if isinstance(pid, int) and status["worker_environment_exists"] else None
    if how is not None:  # the scheduler destroys and reopens such an environment
        raise Degraded(f"manager {status['manager_state']}, but its worker (pid {pid}) died ({how})")
    detail = (
        f"manager {status['manager_state']}, environment {environment}"
        + (f" (worker pid {pid})" if isinstance(pid, int) and status["worker_environment_exists"] else "")
        + f", {status['items_in_queue']} queued, {status['items_in_history']} in history"
    )
    return True, detail


def _open_environment(config: OrchestrionConfig) -> None:
    # The queue stays held: the scheduler starts it once it has looked at the queue and
    # the history (a copy pushed back by a forced stop is decided on before it can run).
    from orchestrion.jobs import Scheduler

    scheduler = Scheduler(config)
    try:
        scheduler.prepare(autostart=False)
    except Exception as exc:
        raise ServiceError(
            f"the queue server's worker environment did not open ({exc}): see {QUEUE_SERVER.log_file(config)}"
        ) from None
    finally:
        scheduler.close()


def _close_environment(config: OrchestrionConfig) -> None:
    """Close the worker environment cleanly so the RunEngine and devices shut down.

    A job still running (`down --force`) is cut short; the job table is told why first.
    """
    try:
        api = queue_server_api(config, timeout=2.0)
        try:
            status = api.status(reload=True)
            if status["worker_environment_exists"]:
                if status["manager_state"] == "idle":
                    api.environment_close()
                else:
                    if status.get("running_item_uid"):
                        store = JobStore.open(config)
                        try:
                            store.note_interruption(
                                str(status["running_item_uid"]), "stopped by `orchestrion down --force`"
                            )
                        finally:
                            store.close()
                    api.environment_destroy()
                api.wait_for_condition(lambda s: not s["worker_environment_exists"], timeout=20.0)
        finally:
            close_api(api)
    except Exception as exc:  # a hung manager still gets its SIGTERM
        logger.warning("could not close the worker environment: %s", exc)


FORCED_STOP = "stopped by `orchestrion down --force`"


def _note_interruption(config: OrchestrionConfig, item_uid: str, reason: str) -> None:
    store = JobStore.open(config)
    try:
        store.note_interruption(item_uid, reason)
    finally:
        store.close()


def _note_running_jobs(config: OrchestrionConfig, reason: str) -> None:
    """The jobs the table shows running lost their queue server: say so for their attempts."""
    store = JobStore.open(config)
    try:
        for job in store.list([JobStatus.RUNNING, JobStatus.PAUSED]):
            # Its own item, or the executor item running it (ADR 0310).
            item_uid = job.item_uid or (job.attempts[-1].item_uid if job.attempts else None)
            if item_uid is not None:
                store.note_interruption(item_uid, reason)
    finally:
        store.close()


def _job_in_progress(config: OrchestrionConfig) -> str | None:
    """A running or paused job: its item would come back at the front of the queue on `up`."""
    api = queue_server_api(config, timeout=2.0)
    try:
        state = str(api.status(reload=True)["manager_state"])
    except Exception:
        return None  # a manager that does not answer has nothing to wait for
    finally:
        close_api(api)
    if state in ("executing_queue", "paused", "executing_task"):
        return f"a job is {'paused' if state == 'paused' else 'running'}"
    return None


# -- the scheduler --------------------------------------------------------------------------


def _scheduler_command(config: OrchestrionConfig) -> list[str]:
    return [sys.executable, "-m", "orchestrion.jobs"]


def _scheduler_check(config: OrchestrionConfig) -> tuple[bool, str]:
    from orchestrion.jobs import read_heartbeat

    beat = read_heartbeat(config)
    if beat is None:
        return False, "no heartbeat yet"
    age = time.time() - float(beat.get("heartbeat", 0.0))
    return age < 5.0, f"heartbeat {age:.1f} s ago"


# -- the keeper ------------------------------------------------------------------------------

KEEPER_FILE = "keeper.json"


def _keeper_command(config: OrchestrionConfig) -> list[str]:
    return [sys.executable, "-m", "orchestrion.services"]


def _keeper_check(config: OrchestrionConfig) -> tuple[bool, str]:
    try:
        beat = json.loads((run_dir(config) / KEEPER_FILE).read_text())
    except (OSError, ValueError):
        return False, "no heartbeat yet"
    age = time.time() - float(beat.get("heartbeat", 0.0))
    return age < 5.0, f"heartbeat {age:.1f} s ago, {beat.get('restarts', 0)} restarts"


REDIS = Service(
    "redis", "redis-server", redis_address, _redis_command, _redis_check, start_timeout=30.0,
    ports=lambda c: (c.redis_port,),
)  # fmt: skip
TILED = Service(
    "tiled", "_tiled_server", tiled_uri, _tiled_command, _tiled_check, start_timeout=120.0,
    ports=lambda c: (c.tiled_port,),
)  # fmt: skip
# The worker catalogues into the stack's Tiled from its start: Tiled comes first.
QUEUE_SERVER = Service(
    "queue-server", "start-re-manager", zmq_control_address, _manager_command, _manager_check,
    ports=lambda c: (c.zmq_control_port, c.zmq_info_port), requires=("redis", "tiled"),
    after_start=_open_environment, before_stop=_close_environment, busy=_job_in_progress,
    on_death=lambda c, how: _note_running_jobs(c, f"the queue server died ({how})"),
)  # fmt: skip
SCHEDULER = Service(
    "scheduler", "orchestrion.jobs", lambda c: str(run_dir(c) / "scheduler.json"),
    _scheduler_command, _scheduler_check, requires=("queue-server",),
)  # fmt: skip

# -- the API server (orchestrion.api): bluesky-httpserver with Orchestrion's router ------


def _api_command(config: OrchestrionConfig) -> list[str]:
    return [sys.executable, "-m", "orchestrion.api"]


def _api_check(config: OrchestrionConfig) -> tuple[bool, str]:
    import ssl

    import httpx

    # A lab's own certificate is trusted here as the CA of the check (it may be self-signed).
    verify: ssl.SSLContext | bool = True
    if config.api_tls_certfile is not None:
        verify = ssl.create_default_context(cafile=str(config.api_tls_certfile))
    response = httpx.get(f"{api_url(config)}/api/orchestrion/health", timeout=2.0, verify=verify)
    return response.status_code == 200, f"HTTP {response.status_code}"


# After the queue server it fronts; `health` answers without a key.
API = Service(
    "api", "orchestrion.api", api_url, _api_command, _api_check, start_timeout=60.0,
    ports=lambda c: (c.api_port,), requires=("queue-server",),
)  # fmt: skip

KEEPER = Service(
    "keeper", "orchestrion.services", lambda c: str(run_dir(c) / KEEPER_FILE), _keeper_command, _keeper_check,
    requires=("redis", "tiled", "queue-server", "scheduler", "api"),
)  # fmt: skip

SERVICES: tuple[Service, ...] = (REDIS, TILED, QUEUE_SERVER, SCHEDULER, API, KEEPER)
"""The services every stack has; `stack_services` adds those the configuration asks for."""


# -- post-processing workers (orchestrion.bus): `post_processing_workers` of them ---------


def _post_processing_check(name: str) -> Callable[[OrchestrionConfig], tuple[bool, str]]:
    def check(config: OrchestrionConfig) -> tuple[bool, str]:
        from orchestrion.bus import BusKeys, connect

        client = connect(config, timeout=2.0)
        try:
            beat = client.get(BusKeys().worker(name))
        finally:
            client.close()
        if beat is None:
            return False, "no heartbeat on the bus"
        heartbeat = json.loads(beat)
        if not heartbeat.get("ready"):
            return False, "starting"
        run = heartbeat.get("run")
        return True, f"worker pid {heartbeat['pid']}, " + (f"writing run entry {run}" if run else "idle")

    return check


def _post_processing_address(config: OrchestrionConfig) -> str:
    from orchestrion.bus import bus_redis_url

    return bus_redis_url(config)


def post_processing_services(config: OrchestrionConfig) -> tuple[Service, ...]:
    """The post-processing workers, ``post-processing-1`` ... ``-N`` (`post_processing_workers`).

    They need Redis (the bus) and Tiled; the queue server does not need them (what it
    publishes waits on the bus), and it stops before them, so they finish what it sent.
    """

    def worker(name: str) -> Service:
        return Service(
            name, "orchestrion.bus", _post_processing_address,
            lambda c: [sys.executable, "-m", "orchestrion.bus", "worker", "--name", name],
            _post_processing_check(name), start_timeout=120.0, requires=("redis", "tiled"),
        )  # fmt: skip

    return tuple(worker(f"post-processing-{n}") for n in range(1, config.post_processing_workers + 1))


def stack_services(config: OrchestrionConfig) -> tuple[Service, ...]:
    """Every service of this configuration's stack, in declaration order."""
    redis, tiled, *rest = SERVICES
    return (redis, tiled, *post_processing_services(config), *rest)


def service(name: str, config: OrchestrionConfig | None = None) -> Service:
    candidates = SERVICES if config is None else stack_services(config)
    for candidate in candidates:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def start_order(services: Sequence[Service]) -> list[Service]:
    """``services`` with each after every service it requires (otherwise as declared)."""
    names = {svc.name for svc in services}
    ordered: list[Service] = []
    placed: set[str] = set()
    remaining = list(services)
    while remaining:
        for svc in remaining:
            unknown = set(svc.requires) - names
            if unknown:
                raise ValueError(f"service {svc.name} requires unknown service {sorted(unknown)[0]}")
            if set(svc.requires) <= placed:
                ordered.append(svc)
                placed.add(svc.name)
                remaining.remove(svc)
                break
        else:
            raise ValueError(f"services require each other in a circle: {[s.name for s in remaining]}")
    return ordered


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
def _exclusive(config: OrchestrionConfig, *, wait: bool = True) -> Iterator[bool]:
    """One `up`, `down` or restart at a time per home; yields False if ``wait`` is off and it is taken."""
    path = run_dir(config) / "supervisor.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _held_file(svc: Service, config: OrchestrionConfig) -> Path:
    return run_dir(config) / f"{svc.name}.held"


def _start_fresh(svc: Service, config: OrchestrionConfig, env: dict[str, str]) -> int:
    """Start ``svc`` after ending what a dead instance of it left running; its pid."""
    svc.clear_leftovers(config)
    return svc.start(config, env)


def up(config: OrchestrionConfig, services: Sequence[Service] | None = None) -> list[ServiceStatus]:
    """Start every service that is not running, each once those it requires are ready; idempotent.

    Services whose requirements are ready start together, so a slow one (Tiled's imports)
    overlaps the others.  If anything fails, what this call started is stopped again.
    """
    order = start_order(stack_services(config) if services is None else services)
    with _exclusive(config):
        env = service_environment(config)
        started: list[Service] = []
        starting: dict[str, tuple[int, float]] = {}  # name -> (pid, deadline)
        ready: set[str] = set()
        try:
            while len(ready) < len(order):
                for svc in order:
                    if svc.name not in ready and svc.name not in starting and set(svc.requires) <= ready:
                        _held_file(svc, config).unlink(missing_ok=True)
                        pid = svc.pid(config)
                        if pid is None:
                            pid = _start_fresh(svc, config, env)
                            started.append(svc)
                        starting[svc.name] = (pid, time.monotonic() + svc.start_timeout)
                progressed = False
                for svc in order:
                    if svc.name not in starting:
                        continue
                    pid, deadline = starting[svc.name]
                    if svc.poll_started(config, pid, deadline) is None:
                        continue
                    if svc.after_start is not None:
                        svc.after_start(config)
                    del starting[svc.name]
                    ready.add(svc.name)
                    progressed = True
                if not progressed:
                    time.sleep(0.1)
        except BaseException:
            # Leave nothing half-started behind: stop what this call started.
            for svc in reversed(started):
                _stop(svc, config)
            raise
        return [svc.status(config) for svc in order]


def down(
    config: OrchestrionConfig, *, force: bool = False, services: Sequence[Service] | None = None
) -> list[ServiceStatus]:
    """Stop every running service, in the reverse of the start order; idempotent.

    Refuses while a service is busy (a job runs: its item would come back at the front of
    the queue on the next `up`), unless ``force``.
    """
    order = start_order(stack_services(config) if services is None else services)
    with _exclusive(config):
        if not force:
            for svc in order:
                reason = svc.busy(config) if svc.busy is not None and svc.pid(config) is not None else None
                if reason is not None:
                    raise ServiceError(f"{reason}: wait for it, cancel it, or use `orchestrion down --force`")
        for wave in stop_waves(order):
            if len(wave) == 1:
                _stop(wave[0], config)
                continue
            threads = [threading.Thread(target=_stop, args=(svc, config), name=f"orchestrion-stop-{svc.name}")
                       for svc in wave]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        reap_exited_children()
        return [svc.status(config) for svc in order]


def stop_waves(order: Sequence[Service]) -> list[list[Service]]:
    """The services of ``order`` (a start order) in waves to stop, each wave's services
    side by side: the keeper alone first (it would restart what the others stop), then
    each service only after every service that requires it.  Stopping them one by one
    took 5-8 s, most of it each post-processing worker's and the queue server's own
    second or two of ending."""
    waves: list[list[Service]] = []
    for svc in reversed(order):
        wave = waves[-1] if waves else None
        if (
            wave is None
            or KEEPER.name in {s.name for s in wave}
            or svc.name == KEEPER.name
            or any(svc.name in other.requires for other in wave)
        ):
            waves.append([svc])
        else:
            wave.append(svc)
    return waves


def _stop(svc: Service, config: OrchestrionConfig) -> None:
    if svc.pid(config) is None:
        svc.clear_leftovers(config)  # what a dead instance left running
        return
    if svc.before_stop is not None:
        svc.before_stop(config)
    svc.stop(config)


def stop_service(config: OrchestrionConfig, name: str) -> None:
    """Stop one service (the others keep running) and hold it: the keeper leaves it be; `up` starts it."""
    with _exclusive(config):
        svc = service(name, config)
        _held_file(svc, config).parent.mkdir(parents=True, exist_ok=True)
        _held_file(svc, config).touch()
        _stop(svc, config)


def restart_dead(config: OrchestrionConfig, env: dict[str, str] | None = None) -> list[str]:
    """Start again every service whose process died (not those stopped on purpose); their names.

    What the keeper does every second.  Skipped while `up` or `down` runs.
    """
    restarted: list[str] = []
    with _exclusive(config, wait=False) as mine:
        if not mine:
            return restarted
        for svc in start_order(stack_services(config)):
            if svc is KEEPER or _held_file(svc, config).exists() or svc.pid(config) is not None:
                continue
            how = svc.death(config)
            logger.error("%s is not running (%s): starting it again", svc.name, how)
            if svc.on_death is not None:
                svc.on_death(config, how)
            pid = _start_fresh(svc, config, env or service_environment(config))
            deadline = time.monotonic() + svc.start_timeout
            while svc.poll_started(config, pid, deadline) is None:
                time.sleep(0.1)
            if svc.after_start is not None:
                svc.after_start(config)
            restarted.append(svc.name)
    return restarted


def keep(config: OrchestrionConfig, stop: threading.Event, interval: float = 1.0) -> None:
    """The keeper's loop: restart dead services until ``stop``; a heartbeat that `status` reads."""
    env = service_environment(config)
    heartbeat = run_dir(config) / KEEPER_FILE
    restarts = 0
    while not stop.is_set():
        try:
            restarts += len(restart_dead(config, env))
        except Exception as exc:  # the next round tries again
            logger.error("keeper: %s: %s", type(exc).__name__, exc)
        temporary = heartbeat.with_suffix(".tmp")
        temporary.write_text(json.dumps({"pid": os.getpid(), "heartbeat": time.time(), "restarts": restarts}))
        temporary.replace(heartbeat)
        stop.wait(interval)


def status(config: OrchestrionConfig, services: Sequence[Service] | None = None) -> list[ServiceStatus]:
    """Each service with its pid, address and health."""
    return [svc.status(config) for svc in start_order(stack_services(config) if services is None else services)]
