"""Facts about local processes, read from /proc: alive or not, and how a dead one ended.

A bottom layer (stdlib only): the supervisor checks its services with it, the scheduler
the queue server's worker.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text.rsplit(")", 1)[1].split()


def alive(pid: int, marker: str | None = None) -> bool:
    """Is ``pid`` a live process (whose command line mentions ``marker``, if given)?

    A zombie (dead, not yet reaped by its parent) is not alive.
    """
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and (marker is None or marker in cmdline)


def death(pid: int) -> str | None:
    """How ``pid`` ended ('killed by SIGKILL', 'exited with status 1'); None while it lives.

    A zombie still shows its exit status (field 52 of /proc/PID/stat, in waitpid's form);
    a process already reaped is only 'gone'.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return "gone"
    if fields[0] != "Z":
        return None
    try:
        status = int(fields[49])  # field 52 of the whole line; fields here start at field 3
    except (IndexError, ValueError):
        return "dead"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def listener(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (any local address); None if none is seen.

    Read from /proc/net/tcp{,6} and the processes' file descriptors: a listener of
    another user is not seen (its descriptors are not readable).
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Does something accept connections on ``host:port``?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def describe(pid: int) -> str:
    """'pid 123 (redis-server 127.0.0.1:6379)': a process, for an error message."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({cmdline[:80]})"
