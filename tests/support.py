"""Helpers the tests share: free loopback ports and waiting for conditions."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from orchestrion.config import OrchestrionConfig, load_config

T = TypeVar("T")


# Ports for the tests' servers come from a block of this test process's own, below the
# kernel's ephemeral range (32768-60999 here): a port that ``bind(0)`` handed out and
# released could be taken as the source port of any outgoing connection, or by another
# test process (pytest-xdist), before the server binds it, and the server then never
# answered.  Each xdist worker (gw0, gw1, ...) has its own block; a port is given once.
# Within its block a process starts at an offset of its process id: two test runs side by
# side (two checkouts on one machine) then rarely reach for the same ports.
_PORT_BLOCK = 3000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
_block_start = 10000 + _PORT_BLOCK * (int(_worker[2:]) + 1 if _worker.startswith("gw") else 0)
_offset = (os.getpid() * 97) % _PORT_BLOCK
_ports = itertools.cycle([*range(_block_start + _offset, _block_start + _PORT_BLOCK),
                          *range(_block_start, _block_start + _offset)])  # fmt: skip
_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no other test process is given."""
    for _ in range(_PORT_BLOCK):
        port = next(_ports)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port left in {_block_start}-{_block_start + _PORT_BLOCK - 1}")


def wait_until(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 30.0) -> None:
    """SIGTERM a server the tests started, SIGKILL it if it has not exited within ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stack_config(home: Path, **overrides: Any) -> OrchestrionConfig:
    """A services stack's configuration on free loopback ports, with fast simulated hardware.

    Every port the stack listens on is chosen here: a port left at its default (the API
    server's, say) would collide with another stack or with anything on the machine.
    """
    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(free_port())
    redis_port, control_port, info_port, tiled_port, api_port = sorted(ports)
    settings: dict[str, Any] = {
        "home": home, "sim_time_scale": 0.02, "sim_seed": 1234,
        "redis_port": redis_port, "zmq_control_port": control_port, "zmq_info_port": info_port,
        "tiled_port": tiled_port, "api_port": api_port, "scheduler_poll_interval": 0.02,
    }  # fmt: skip
    return load_config(**(settings | overrides))  # an override wins (a bench's faster lab, say)


@contextlib.contextmanager
def running_stack(home: Path, **overrides: Any) -> Iterator[OrchestrionConfig]:
    """`orchestrion up` on `stack_config`; `down --force` afterwards, whatever happened."""
    from orchestrion.services import down, up

    config = stack_config(home, **overrides)
    try:
        up(config)
        yield config
    finally:
        down(config, force=True)


@contextlib.contextmanager
def xvfb_display(timeout: float = 20.0) -> Iterator[str]:
    """A private X server (Xvfb) for the duration: its display name (":N"), once it accepts clients.

    Xvfb chooses a free display itself (``-displayfd``) and writes its number when ready;
    ``-noreset`` keeps it up between clients (a bare X server resets when its last client
    leaves, and refuses connections meanwhile); no TCP listener.  The pipe stays open while
    Xvfb runs: it treats a failed write as fatal.  Fails if Xvfb died while it was used.
    """
    import select
    import shutil

    program = shutil.which("Xvfb")
    if program is None:
        raise RuntimeError("Xvfb is not installed (`make system-deps` installs xvfb)")
    ready, told = os.pipe()
    server = subprocess.Popen(
        [program, "-displayfd", str(told), "-nolisten", "tcp", "-noreset", "-screen", "0", "2048x2048x24"],
        pass_fds=(told,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(told)
    try:
        said = b""
        deadline = time.monotonic() + timeout
        while not said.endswith(b"\n") and (left := deadline - time.monotonic()) > 0:
            if not select.select([ready], [], [], left)[0]:
                break
            chunk = os.read(ready, 64)
            if not chunk:
                break
            said += chunk
        if not said.endswith(b"\n") or not said.strip().isdigit():
            raise RuntimeError(f"Xvfb did not report a display within {timeout:g} s (exit status {server.poll()})")
        number = said.decode().strip()
        socket_path = Path(f"/tmp/.X11-unix/X{number}")
        if not socket_path.is_socket():
            raise RuntimeError(f"Xvfb reported display :{number}, but {socket_path} is not there")
        yield f":{number}"
        if server.poll() is not None:
            raise RuntimeError(f"Xvfb exited (status {server.returncode}) while the tests used it")
    finally:
        stop_process(server)
        os.close(ready)
