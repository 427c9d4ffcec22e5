"""A post-processing process kept warm for the next command (ADR 0814).

A helper's imports (Tiled's server and catalog, bluesky-tiled-plugins with xarray and
dask) are seconds of CPU, more than a short scan takes.  `orchestrion run` therefore
leaves one helper behind when it ends: a *standby*, detached from the command, that
imports what a helper imports and then waits, for at most
``post_processing_standby`` seconds, on a Unix socket private to this user.  The next
command with the same helper command line, package and environment adopts it instead
of starting one: it hands over the two ends of a fresh pair of pipes (and its stderr)
with ``SCM_RIGHTS``, and from then on the standby is exactly a helper that command
started (`serve` on those pipes, `ProcessSink` on the other ends): the same protocol,
the same retention of unconfirmed documents, the same take-over when it dies.  Only
its exit status is unknown to the adopter, which is not its parent.

What a standby holds is imports only: it has been given no configuration, opened no
file and no catalog; the adopting command's factory message builds its stage.  A
standby is adopted once (it stops listening when it is), ends when its time is up or
when its home directory is gone, and is found only by a command whose key matches:
the helper's command line, the interpreter, the orchestrion package's files (a changed
package is not served by old code), the working directory and the environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

ADOPT = b"orchestrion-adopt"
ADOPTED = b"orchestrion-adopted "
HANDSHAKE_TIMEOUT = 2.0  # s: a standby that does not answer by then is not adopted

# Environment variables that differ between two shells of the same user for reasons a
# helper never sees; every other variable is part of the key.
_VOLATILE_ENVIRONMENT = frozenset({
    "_", "OLDPWD", "PWD", "SHLVL", "COLUMNS", "LINES", "TERM", "TERM_PROGRAM", "TERM_PROGRAM_VERSION",
    "COLORTERM", "WINDOWID", "TMUX_PANE", "STY", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "PS1", "PROMPT_COMMAND",
    "HISTFILE", "LS_COLORS",
})  # fmt: skip


def standby_directory() -> Path:
    """This user's directory of standby sockets: in the temporary directory (a socket's
    path must be short), created private, refused if anyone else could enter it."""
    directory = Path(tempfile.gettempdir()) / f"orchestrion-standby-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    info = directory.lstat()
    if not directory.is_dir() or directory.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} is not a private directory of this user: no standby helper is used")
    return directory


def _package_fingerprint() -> str:
    """Names, sizes and modification times of the orchestrion package's Python files."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                info = os.stat(os.path.join(directory, name))
                digest.update(f"{directory}/{name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def standby_key(command: Sequence[str], home: Path, environment: Mapping[str, str] | None = None) -> str:
    """What a standby must share with the command that adopts it, as a short digest.

    ``environment``: the one the command started with (default: this process's now).  A
    command's imports add to its environment (epicscorelibs sets ``PYEPICS_LIBCA``), so
    the command that leaves a standby names the environment it was started with.
    """
    digest = hashlib.sha256()
    variables = sorted((k, v) for k, v in (environment or os.environ).items() if k not in _VOLATILE_ENVIRONMENT)
    for part in (*command, sys.version, str(home.resolve()), os.getcwd(), _package_fingerprint(), repr(variables)):
        digest.update(part.encode(errors="surrogateescape") + b"\0")
    return digest.hexdigest()[:24]


class AdoptedHelper:
    """A standby helper adopted by this process: the `subprocess.Popen` surface
    `ProcessSink` uses, over a process that is not this one's child (a pidfd)."""

    def __init__(self, pid: int, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.stdout: IO[bytes] | None = stdout
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        return self.wait(0) if self._ended(0) else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended(timeout):
            raise subprocess.TimeoutExpired(f"post-processing standby {self.pid}", timeout or 0.0)
        # Not this process's child: its exit status is not ours to read.  `exit_status`
        # says so where a status would be reported.
        self.returncode = 0
        return self.returncode

    def _ended(self, timeout: float | None) -> bool:
        if self._pidfd < 0:
            return True
        readable, _, _ = select.select([self._pidfd], [], [], timeout)
        if readable:
            os.close(self._pidfd)
            self._pidfd = -1
        return bool(readable)

    def send_signal(self, signum: int) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if getattr(self, "_pidfd", -1) >= 0:
            os.close(self._pidfd)


def exit_status(process: object) -> str:
    """How a helper process ended, for a message: its status, or that it is not known."""
    if isinstance(process, AdoptedHelper):
        return "exit status unknown: it was a standby this process adopted"
    code = getattr(process, "returncode", None)
    if isinstance(code, int) and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def adopt_standby(command: Sequence[str], home: Path) -> AdoptedHelper | None:
    """The standby helper for ``command`` and ``home``, adopted; None when there is none."""
    try:
        path = standby_directory() / f"{standby_key(command, home)}.sock"
    except OSError:
        return None
    if not path.exists():
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(HANDSHAKE_TIMEOUT)
    helper_stdin, our_stdin = os.pipe()
    our_stdout, helper_stdout = os.pipe()
    adopted = False
    try:
        connection.connect(str(path))
        # Its stdin and stdout become these pipes, its stderr ours: what it logs while it
        # works for this command reaches the same place a started helper's would.
        socket.send_fds(connection, [ADOPT], [helper_stdin, helper_stdout, sys.stderr.fileno()])
        reply = connection.recv(64)
        if not reply.startswith(ADOPTED):
            return None
        helper = AdoptedHelper(int(reply[len(ADOPTED) :]), os.fdopen(our_stdin, "wb"), os.fdopen(our_stdout, "rb"))
        adopted = True
        return helper
    except (OSError, ValueError):  # gone, refused, or it did not answer in time
        return None
    finally:
        connection.close()
        os.close(helper_stdin)
        os.close(helper_stdout)
        if not adopted:
            os.close(our_stdin)
            os.close(our_stdout)


def spawn_standby(
    command: Sequence[str], home: Path, seconds: float, environment: Mapping[str, str] | None = None
) -> None:
    """Leave a standby for ``command`` behind, unless one already waits for it.

    ``environment``: the one this command started with (`standby_key`); the standby is
    started in it, as the next command's own helper would be.

    The standby detaches itself (it forks, and its first process ends at once), so it is
    nobody's child here and outlives this process; its start is not waited for.
    """
    try:
        directory = standby_directory()
    except OSError:
        return
    environment = dict(environment or os.environ)
    key = standby_key(command, home, environment)
    if _locked(directory / f"{key}.lock"):
        return  # a standby holds it: waiting, or still importing
    arguments = [*command, "--standby", str(directory / f"{key}.sock"), "--standby-home", str(home.resolve()),
                 "--standby-seconds", str(seconds)]  # fmt: skip
    process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, env=environment)  # fmt: skip
    # Its first process exits as soon as it has forked; reaped here, off this thread.
    threading.Thread(target=process.wait, name="orchestrion-standby-reaper", daemon=True).start()


def _locked(path: Path) -> bool:
    """Whether another process holds ``path``'s lock now."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


class Standby:
    """The standby's side: listen, hand this process's stdio to the first adopter.

    Made before the helper's imports, so a command that comes while they run adopts it
    (it answers at once; its documents wait in the pipe until the imports are done).
    """

    def __init__(self, path: Path, home: Path, seconds: float) -> None:
        self.path, self.home = path, home
        self.deadline = time.monotonic() + seconds
        self.adopted = threading.Event()
        # Adoption and the end of waiting exclude each other; re-entrant for the SIGTERM
        # handler, which runs in the main thread, perhaps inside `wait`.
        self._state = threading.RLock()
        self._listening = False
        self._lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(0) from None  # another standby for the same key: it serves
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a standby that was killed: the lock says none listens
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        os.chmod(path, 0o600)
        self._listener.listen(4)
        self._listening = True
        self._identity = path.stat().st_ino
        # Ended by a signal while it waits, it takes its socket with it; once adopted it is
        # a helper, which a signal ends as usual.
        signal.signal(signal.SIGTERM, self._terminated)
        threading.Thread(target=self._accept, name="orchestrion-standby", daemon=True).start()

    def _terminated(self, signum: int, frame: object) -> None:
        with self._state:
            if not self.adopted.is_set():
                self._stop_listening()
                os._exit(128 + signum)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _accept(self) -> None:
        while not self.adopted.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed: the standby is ending
            with connection:
                connection.settimeout(HANDSHAKE_TIMEOUT)
                try:
                    if self._adopt(connection):
                        return
                except OSError:
                    continue

    def _adopt(self, connection: socket.socket) -> bool:
        """Take ``connection``'s pipes as stdio if it is an adopter (True: stop accepting)."""
        credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if int.from_bytes(credentials[4:8], sys.byteorder) != os.getuid():
            return False  # the directory is private; this is a second guard
        message, descriptors, _, _ = socket.recv_fds(connection, 64, 3)
        with self._state:
            if message != ADOPT or len(descriptors) != 3 or not self._listening:
                for descriptor in descriptors:
                    os.close(descriptor)
                return not self._listening
            # Stop listening first: no second command may think it adopted this one.
            self._stop_listening()
            for target, descriptor in zip((0, 1, 2), descriptors, strict=True):
                os.dup2(descriptor, target)
                os.close(descriptor)
            connection.sendall(ADOPTED + str(os.getpid()).encode())
            self.adopted.set()
        return True

    def _stop_listening(self) -> None:
        """Unlink the socket (if it is still this one's), close it, release the lock (``_state`` held)."""
        if not self._listening:
            return
        self._listening = False
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._identity:
                self.path.unlink()
        # The lock file goes too (a standby per key ever made would leave one each); a
        # spawner that opened it just before locks a file no other will see, and the
        # second standby that can follow ends when it finds its socket replaced.
        with contextlib.suppress(OSError):
            self.path.with_suffix(".lock").unlink()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        os.close(self._lock)

    def _abandoned(self) -> bool:
        """Its time is up, or its home or its socket (replaced, removed) is gone."""
        if time.monotonic() >= self.deadline or not self.home.is_dir():
            return True
        try:
            return self.path.stat().st_ino != self._identity
        except OSError:
            return True

    def wait(self) -> bool:
        """Until adopted (True), or until `_abandoned` (False: nothing was handed over)."""
        while not self.adopted.wait(timeout=1.0):
            if self._abandoned():
                with self._state:
                    if self.adopted.is_set():
                        break
                    self._stop_listening()
                    return False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return True


def detach() -> None:
    """Fork once more and let the first process end: the standby is then nobody's child."""
    if os.fork() > 0:
        os._exit(0)


__all__ = ["AdoptedHelper", "Standby", "adopt_standby", "detach", "exit_status", "spawn_standby", "standby_key"]
