"""Pre-processing: compile the sequences of upcoming points while the hardware runs."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from types import TracebackType

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator

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

_installed: Callable[[ScanPoint], PulseSequence] | None = None
"""A worker process's compiler, inherited at its fork (`_install`)."""


def _install(compile_point: Callable[[ScanPoint], PulseSequence]) -> None:
    global _installed
    _installed = compile_point
    os.nice(WORKER_NICENESS)


def _compile_installed(point: ScanPoint) -> PulseSequence:
    assert _installed is not None, "a pre-processing process without its compiler"
    return _installed(point)


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
    compiler is inherited at the fork, not pickled; points and sequences are
    (ADR 0811).
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
        if executor is None and processes:
            self._compile = _compile_installed
            executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                initializer=_install, initargs=(compile_point,),
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
            if not self._holds_interval:
                self._holds_interval = True
                hold_short_switch_interval()
            self._futures[point.index] = self._executor.submit(self._compile, point)

    def prime(self) -> None:
        """Start compiling the first ``lookahead`` points (before the run needs them)."""
        self._submit_through(self._lookahead)

    def sequence_for(self, index: int) -> MsgGenerator[PulseSequence]:
        """Plan stub: the compiled sequence of point ``index``, waiting without blocking the loop."""
        self._submit_through(index + self._lookahead)
        future = self._futures.pop(index)
        if not future.done():

            async def ready() -> PulseSequence:
                return await asyncio.wrap_future(future)

            # The RunEngine's loop keeps running (monitors, other devices) while we wait.
            yield from bps.wait_for([ready])
        return future.result()
