"""Running a slow stage off the RunEngine's thread: in a thread, or in a helper process.

A RunEngine calls its subscribers synchronously; a stage that waits on a catalog (HTTP
round trips, SQL appends) slows the scan by as much.  These wrappers queue documents
and return at once; at a run's stop document they wait until the stage has handled the
whole run, so a run that has ended is in the catalog.  Documents keep their order.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from typing import Any

logger = logging.getLogger(__name__)

STOP_WAIT = 300.0  # s: longest a stop document waits for the stage to catch up
_CLOSE = "__close__"


class ThreadedSink:
    """Feeds ``sink`` from a queue in a thread of its own (for stages that wait on I/O)."""

    def __init__(self, sink: Callable[[str, dict[str, Any]], Any], label: str) -> None:
        self.sink = sink
        self.label = label
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"orchestrion-{label}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            name, doc = self._queue.get()
            try:
                if name == _CLOSE:
                    return
                self.sink(name, doc)
            except Exception:
                logger.exception("%s failed on a %s document", self.label, name)
            finally:
                self._queue.task_done()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self._queue.put((name, doc))
        if name == "stop":
            self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put((_CLOSE, {}))
            self._thread.join(timeout=STOP_WAIT)
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()


class ProcessSink:
    """Feeds a stage that lives in a helper process (spawned), made there by ``factory``.

    ``factory`` must be importable (a module-level function); it gets ``argument`` and
    returns the ``(name, doc)`` callable.  Documents are pickled to the helper; at each
    stop document this waits for the helper's acknowledgement.  The helper ends when
    `close` is called or when this process goes away.
    """

    def __init__(
        self, factory: Callable[[Any], Callable[[str, dict[str, Any]], Any]], argument: Any, label: str
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.label = label
        self._inbox: Any = context.Queue()
        self._acks: Any = context.Queue()
        self._process: SpawnProcess = context.Process(
            target=_serve, args=(factory, argument, self._inbox, self._acks, os.getpid()),
            name=f"orchestrion-{label}", daemon=True,
        )  # fmt: skip
        self._process.start()
        ready = self._acks.get(timeout=STOP_WAIT)
        if ready != "ready":
            self.close()
            raise RuntimeError(f"{label}: the helper process did not start: {ready}")

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if not self._process.is_alive():
            raise RuntimeError(f"{self.label}: the helper process has exited")
        self._inbox.put((name, doc))
        if name == "stop":
            self._wait_for_ack(doc.get("run_start"))

    def _wait_for_ack(self, run_uid: object) -> None:
        # In short slices: a helper that died must not hold up the RunEngine for minutes.
        waited = 0.0
        while waited < STOP_WAIT:
            try:
                self._acks.get(timeout=0.5)
                return
            except queue.Empty:
                waited += 0.5
                if not self._process.is_alive():
                    raise RuntimeError(
                        f"{self.label}: the helper process exited before run {run_uid} was written"
                    ) from None
        logger.error("%s: run %s not acknowledged within %.0f s", self.label, run_uid, STOP_WAIT)

    def close(self) -> None:
        if self._process.is_alive():
            self._inbox.put((_CLOSE, {}))
            self._process.join(timeout=STOP_WAIT)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._inbox.close()
        self._acks.close()
        self._inbox.join_thread()
        self._acks.join_thread()


def _serve(
    factory: Callable[[Any], Callable[[str, dict[str, Any]], Any]],
    argument: Any,
    inbox: Any,
    acks: Any,
    parent: int,
) -> None:
    # Ctrl-C in a terminal reaches the whole process group; it is the RunEngine's to
    # handle (pause), and this helper must go on writing what it was given.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sink = factory(argument)
    except Exception as exc:
        logger.exception("helper process: the stage could not be built")
        acks.put(f"{type(exc).__name__}: {exc}")
        return
    acks.put("ready")
    try:
        while True:
            try:
                name, doc = inbox.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return  # the process that fed us is gone
                continue
            if name == _CLOSE:
                return
            try:
                sink(name, doc)
            except Exception:
                logger.exception("helper process: a %s document failed", name)
            if name == "stop":
                acks.put(doc.get("run_start"))
    finally:
        close = getattr(sink, "close", None)
        if callable(close):
            close()
