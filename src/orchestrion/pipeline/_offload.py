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
        self._outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._acks: queue.Queue[str] = queue.Queue()
        self._feeder = threading.Thread(target=self._feed, name=f"orchestrion-{label}-feed", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"orchestrion-{label}-acks", daemon=True)
        self._feeder.start()
        self._reader.start()
        # Not waited for: the helper imports while the session opens and the run starts;
        # documents wait in the pipe, and the first stop waits for the helper.
        self._outbox.put(("__factory__", {"factory": factory, "argument": argument}))

    def _feed(self) -> None:
        assert self._process.stdin is not None
        stream = self._process.stdin
        try:
            while (item := self._outbox.get()) is not None:
                pickle.dump(item, stream, protocol=pickle.HIGHEST_PROTOCOL)
                if self._outbox.empty():
                    stream.flush()
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
        self._outbox.put((name, doc))
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
        self._outbox.put(None)
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
                name, doc = pickle.load(source)
            except EOFError:
                return  # closed, or the feeding process is gone
            if name == "__factory__":
                try:
                    sink = doc["factory"](doc["argument"])
                except Exception as exc:
                    logger.exception("helper process: the stage could not be built")
                    print(f"{ACK}{type(exc).__name__}: {exc}", file=answers, flush=True)
                    return
                print(f"{ACK}ready", file=answers, flush=True)
                continue
            assert sink is not None
            try:
                sink(name, doc)
            except Exception:
                logger.exception("helper process: a %s document failed", name)
            if name == "stop":
                print(f"{ACK}{doc.get('run_start')}", file=answers, flush=True)
    finally:
        close = getattr(sink, "close", None)
        if callable(close):
            close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _serve()
