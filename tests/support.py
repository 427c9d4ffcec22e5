"""Helpers the tests share: free loopback ports and waiting for conditions."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
