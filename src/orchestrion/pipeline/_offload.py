"""Running a slow stage off the RunEngine's thread: in a thread, or in a helper process.

A RunEngine calls its subscribers synchronously; a stage that waits on a catalog (HTTP
round trips, SQL appends) slows the scan by as much.  These wrappers queue documents
and return at once; at a run's stop document they wait until the stage has handled the
whole run, so a run that has ended is in the catalog.  Documents keep their order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

FEED_BATCH = 64  # events handed to the helper at once
FEED_INTERVAL = 0.2  # s: longest a document waits before it is handed over
STOP_WAIT = 300.0  # s: longest a stop document waits for the stage to catch up
ACK = "orchestrion-ack "
_CLOSE = "__close__"  # ThreadedSink: ends its thread


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
    """Feeds a stage that lives in a helper process, made there by ``factory(argument)``.

    The helper is a fresh interpreter (``python -m orchestrion.pipeline._offload``), not
    a multiprocessing child, so it never re-imports the caller's main module.  ``factory``
    must be importable by name; ``argument`` and the documents are pickled over the
    helper's stdin by a feeder thread; at each stop document this waits until the helper
    acknowledges the run.  The helper ends at `close`, or when this process goes away
    (its stdin closes).
    """

    def __init__(
        self, factory: Callable[[Any], Callable[[str, dict[str, Any]], Any]], argument: Any, label: str
    ) -> None:
        self.label = label
        self._process = subprocess.Popen(
            [sys.executable, "-m", "orchestrion.pipeline._offload"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        # Documents are handed over in batches: waking the feeder thread for every event
        # cost the RunEngine thread about 0.3 ms an event in GIL hand-offs.
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._acks: queue.Queue[str] = queue.Queue()
        self._feeder = threading.Thread(target=self._feed, name=f"orchestrion-{label}-feed", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"orchestrion-{label}-acks", daemon=True)
        # Not waited for: the helper imports while the session opens and the run starts;
        # documents wait here and in the pipe, and the first stop waits for the helper.
        self._pending.append(("__factory__", {"factory": factory, "argument": argument}))
        self._wake.set()
        self._feeder.start()
        self._reader.start()

    def _feed(self) -> None:
        assert self._process.stdin is not None
        stream = self._process.stdin
        try:
            while True:
                # Wakes for anything but events, for a full batch, or after the interval,
                # so a slow scan still reaches the catalog within about that interval.
                self._wake.wait(timeout=FEED_INTERVAL)
                self._wake.clear()
                with self._lock:
                    batch, self._pending = self._pending, []
                    closing = self._closing
                if batch:
                    pickle.dump(batch, stream, protocol=pickle.HIGHEST_PROTOCOL)
                    stream.flush()
                if closing:
                    return
        except (BrokenPipeError, OSError, pickle.PicklingError):
            logger.exception("%s: documents can no longer reach the helper process", self.label)
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            text = line.decode(errors="replace").strip()
            if text.startswith(ACK):
                self._acks.put(text[len(ACK) :])

    def _ack(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self._acks.get(timeout=0.2)
            except queue.Empty:
                if self._process.poll() is not None and self._acks.empty():
                    return None
        return None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if self._process.poll() is not None:
            raise RuntimeError(f"{self.label}: the helper process has exited ({self._process.returncode})")
        with self._lock:
            self._pending.append((name, doc))
            urgent = name not in ("event", "event_page") or len(self._pending) >= FEED_BATCH
        if urgent:
            self._wake.set()
        if name == "stop":
            self._wait_for(str(doc.get("run_start")))

    def _wait_for(self, run_uid: str) -> None:
        # In short slices (see `_ack`): a helper that died does not hold up the RunEngine.
        while (answer := self._ack(STOP_WAIT)) is not None:
            if answer == run_uid:
                return
            if answer != "ready":
                logger.error("%s: %s", self.label, answer)
        if self._process.poll() is not None:
            raise RuntimeError(f"{self.label}: the helper process exited before run {run_uid} was written")
        logger.error("%s: run %s not acknowledged within %.0f s", self.label, run_uid, STOP_WAIT)

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self._wake.set()
        self._feeder.join(timeout=STOP_WAIT)
        try:
            self._process.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()


def _serve() -> None:
    """The helper's side: build the stage, feed it, acknowledge each stop on stdout."""
    # Ctrl-C in a terminal reaches the whole process group; it is the RunEngine's to
    # handle (pause), and this helper must go on writing what it was given.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Acknowledgements go to the original stdout; anything else the stage prints goes
    # to stderr, so it cannot be taken for one.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    source = sys.stdin.buffer
    sink: Callable[[str, dict[str, Any]], Any] | None = None
    try:
        while True:
            try:
                batch: list[tuple[str, dict[str, Any]]] = pickle.load(source)
            except EOFError:
                return  # closed, or the feeding process is gone
            for name, doc in batch:
                sink = _handle(name, doc, sink, answers)
                if sink is None:
                    return
    finally:
        close = getattr(sink, "close", None)
        if callable(close):
            close()


def _handle(
    name: str, doc: dict[str, Any], sink: Callable[[str, dict[str, Any]], Any] | None, answers: Any
) -> Callable[[str, dict[str, Any]], Any] | None:
    """One message in the helper; returns the stage (None: it could not be built)."""
    if name == "__factory__":
        try:
            built: Callable[[str, dict[str, Any]], Any] = doc["factory"](doc["argument"])
        except Exception as exc:
            logger.exception("helper process: the stage could not be built")
            print(f"{ACK}{type(exc).__name__}: {exc}", file=answers, flush=True)
            return None
        print(f"{ACK}ready", file=answers, flush=True)
        return built
    assert sink is not None
    try:
        sink(name, doc)
    except Exception:
        logger.exception("helper process: a %s document failed", name)
    if name == "stop":
        print(f"{ACK}{doc.get('run_start')}", file=answers, flush=True)
    return sink


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _serve()
