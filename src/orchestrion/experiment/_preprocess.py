"""Pre-processing: compile the sequences of upcoming points while the hardware runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from types import TracebackType

from bluesky.utils import Msg, MsgGenerator

from orchestrion.errors import PreprocessingError
from orchestrion.sequence import PulseSequence

from ._scan import ScanPoint

SWITCH_INTERVAL = 0.0005
"""s: how long a compiling thread may hold the GIL while the RunEngine's threads wait for it.

Python's default is 5 ms: with compilers busy in the pool, each of the many times the
RunEngine's threads need the GIL between two points could cost them that long, and the
hardware waits meanwhile (ADR 0811)."""


_switch_lock = threading.Lock()
_switch_holders = 0
_switch_saved = 0.0


def hold_short_switch_interval() -> None:
    """Make the switch interval at most `SWITCH_INTERVAL` until the matching release.

    Held by each compiling `Preprocessor` and by the preparation of the next job's start
    (ADR 0313); the interval the first holder found comes back when the last releases.
    """
    global _switch_holders, _switch_saved
    with _switch_lock:
        if _switch_holders == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL))
        _switch_holders += 1


def release_short_switch_interval() -> None:
    global _switch_holders
    with _switch_lock:
        _switch_holders -= 1
        if _switch_holders == 0:
            sys.setswitchinterval(_switch_saved)


@contextlib.contextmanager
def short_switch_interval() -> Iterator[None]:
    hold_short_switch_interval()
    try:
        yield
    finally:
        release_short_switch_interval()


WORKER_NICENESS = 10
"""Of the worker processes (``processes=True``): with the look-ahead full they have time
to spare, and the RunEngine's process, whose every delay is the hardware's, gets the CPU
first on a machine with few cores (as the post-processing process does, ADR 0205)."""

logger = logging.getLogger(__name__)


def can_fork() -> bool:
    """Whether worker processes can be forked here (``processes=True``): Linux and the
    other Unixes but macOS, whose system libraries are not safe to use after a fork."""
    return "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"


_installed: Callable[[ScanPoint], PulseSequence] | None = None
"""A worker process's compiler, inherited at its fork (`_install`)."""


def _install(compile_point: Callable[[ScanPoint], PulseSequence], parent: int) -> None:
    global _installed
    _installed = compile_point
    _end_with(parent)
    os.nice(WORKER_NICENESS)
    # Ctrl-C in a terminal reaches the whole process group: it is the RunEngine's, to
    # pause the run at its next point, not a worker's, whose compilation would fail.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The forking process's threads are not in this child, but what they registered to
    # run at the interpreter's shutdown is: the embedded catalog's app (a starlette
    # TestClient) waits there for its portal thread, which a forked worker would do for
    # ever when it exits (the shell's `exit` hung on its workers).  Nothing of the
    # parent's is this child's to shut down.
    inherited = getattr(threading, "_threading_atexits", None)
    if isinstance(inherited, list):
        inherited.clear()


def _end_with(parent: int) -> None:
    """End this worker when ``parent``, the process that forked it, ends, however it ends.

    The pool's task pipe gives no end of input when the parent is SIGKILLed (the sibling
    workers hold its other end too), so its workers waited for ever, orphans of a killed
    `orchestrion run` (found: two per kill, 100 MB each, still there an hour later).  A
    pidfd of the parent becomes readable when it exits: a thread here waits for that.
    """
    try:
        watched = os.pidfd_open(parent)
    except OSError:  # it has ended already (or no pidfds on this system: see below)
        watched = -1
    if os.getppid() != parent:  # it ended before it could be watched
        os._exit(0)
    if watched < 0:
        return

    def watch() -> None:
        select.select([watched], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="orchestrion-preprocess-parent", daemon=True).start()


def _compile_installed(point: ScanPoint) -> PulseSequence:
    assert _installed is not None, "a pre-processing process without its compiler"
    sequence = _installed(point)
    # Tried here, where the failure can be told apart from one of the compiler's own:
    # the pool would report the pickling error of a result as if the compiler raised it.
    try:
        pickle.dumps(sequence, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise PreprocessingError(
            f"point {point.index}: the compiled sequence ({type(sequence).__qualname__}) cannot be sent back "
            f"from its worker process ({type(exc).__name__}: {exc}); "
            "set preprocess_processes: false to compile in threads"
        ) from None
    return sequence


class Preprocessor:
    """Keeps up to ``lookahead`` compiled sequences ready ahead of the current point.

    Compilation runs in a thread pool, so it overlaps with the sequencer executing the
    current point (which awaits in the RunEngine's event loop and holds no lock).  With
    ``lookahead=0`` each point is compiled only when the hardware asks for it.  Points
    are taken from ``points`` as they are needed: at most ``lookahead`` beyond the
    current one are ever made.  ``ready`` holds sequences already compiled, by point
    index (the run's first, compiled before the run opened to refuse a bad one): they
    are not compiled again.

    While compilations are in the pool, the interpreter's switch interval is at most
    `SWITCH_INTERVAL`, so the RunEngine's threads get the GIL back soon; `close`
    restores it.

    ``processes=True`` compiles in ``workers`` forked processes instead (ICON's
    pre-processing workers), so compilation never holds this process's GIL: the
    compiler is inherited at the fork, not pickled (a closure, or one holding a lock or
    a connection, will do); points and sequences are (ADR 0811, 0820).  Where processes
    cannot be forked (`can_fork`) it compiles in threads.  A worker that dies, or a
    sequence that cannot be pickled, ends the run with a `PreprocessingError`.
    """

    def __init__(
        self,
        compile_point: Callable[[ScanPoint], PulseSequence],
        points: Iterable[ScanPoint],
        *,
        lookahead: int,
        workers: int,
        executor: Executor | None = None,
        ready: Mapping[int, PulseSequence] | None = None,
        processes: bool = False,
    ) -> None:
        self._compile = compile_point
        self._points = iter(points)
        self._lookahead = lookahead
        self._owns_executor = executor is None
        if executor is None and processes and not can_fork():
            logger.info("pre-processing compiles in threads: worker processes cannot be forked on %s", sys.platform)
            processes = False
        self._processes = executor is None and processes
        if self._processes:
            self._compile = _compile_installed
            executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                initializer=_install, initargs=(compile_point, os.getpid()),
            )  # fmt: skip
        self._executor = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
        self._futures: dict[int, Future[PulseSequence]] = {}
        self._submitted = 0  # points [0, _submitted) have been handed to the pool
        self._ready = dict(ready or {})
        self._holds_interval = False  # a short switch interval, while compilations are in the pool

    def __enter__(self) -> Preprocessor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._holds_interval:
            self._holds_interval = False
            release_short_switch_interval()

    def _submit_through(self, last: int) -> None:
        while self._submitted <= last:
            point = next(self._points, None)
            if point is None:
                return
            self._submitted += 1
            if point.index in self._ready:
                done: Future[PulseSequence] = Future()
                done.set_result(self._ready.pop(point.index))
                self._futures[point.index] = done
                continue
            # Worker processes do not share the RunEngine's GIL: no short interval for them.
            if not self._holds_interval and not self._processes:
                self._holds_interval = True
                hold_short_switch_interval()
            self._futures[point.index] = self._executor.submit(self._compile, point)

    def prime(self) -> None:
        """Start compiling the point after the first (before the run needs it).

        Only that one: the rest of the look-ahead goes to the pool once the first point
        executes (`look_ahead`), so that while the run opens one worker, not all, takes
        the CPU (and, in threads, the GIL) from the RunEngine (ADR 0820).
        """
        self._submit_through(min(self._lookahead, 1))

    def look_ahead(self, index: int) -> None:
        """Hand the pool the points up to ``lookahead`` beyond point ``index``."""
        self._submit_through(index + self._lookahead)

    def sequence_for(self, index: int, *, look_ahead: bool = True) -> MsgGenerator[PulseSequence]:
        """Plan stub: the compiled sequence of point ``index``, waiting without blocking the loop.

        With ``look_ahead`` the points up to ``lookahead`` beyond it are handed to the
        pool first; a run passes False and calls `look_ahead` once point ``index``
        executes instead: compiling threads woken between two points would take the GIL
        from the RunEngine while the hardware waits (ADR 0820).
        """
        self._submit_through(index + self._lookahead if look_ahead else index)
        future = self._futures.pop(index)
        if not future.done():

            async def ready() -> PulseSequence:
                return await asyncio.wrap_future(future)

            # The RunEngine's loop keeps running (monitors, other devices) while we wait.
            # A plain message: a plan stub formats the call stack when made (ADR 0820).
            yield Msg("wait_for", None, [ready])
        try:
            return future.result()
        except BrokenExecutor as exc:
            # A worker process killed (the out-of-memory killer, a signal) or crashed:
            # the pool fails every point it held at once, nothing waits for it.
            raise PreprocessingError(
                f"point {index}: pre-processing stopped, a worker process ended while compiling ({exc})"
            ) from exc
