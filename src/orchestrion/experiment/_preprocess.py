"""Pre-processing: compile the sequences of upcoming points while the hardware runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from types import TracebackType

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator

from orchestrion.sequence import PulseSequence

from ._scan import ScanPoint


class Preprocessor:
    """Keeps up to ``lookahead`` compiled sequences ready ahead of the current point.

    Compilation runs in a thread pool, so it overlaps with the sequencer executing the
    current point (which awaits in the RunEngine's event loop and holds no lock).  With
    ``lookahead=0`` each point is compiled only when the hardware asks for it.  Points
    are taken from ``points`` as they are needed: at most ``lookahead`` beyond the
    current one are ever made.
    """

    def __init__(
        self,
        compile_point: Callable[[ScanPoint], PulseSequence],
        points: Iterable[ScanPoint],
        *,
        lookahead: int,
        workers: int,
        executor: Executor | None = None,
    ) -> None:
        self._compile = compile_point
        self._points = iter(points)
        self._lookahead = lookahead
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
        self._futures: dict[int, Future[PulseSequence]] = {}
        self._submitted = 0  # points [0, _submitted) have been handed to the pool

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

    def _submit_through(self, last: int) -> None:
        while self._submitted <= last:
            point = next(self._points, None)
            if point is None:
                return
            self._futures[point.index] = self._executor.submit(self._compile, point)
            self._submitted += 1

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
