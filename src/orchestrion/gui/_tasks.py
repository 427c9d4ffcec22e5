"""Calls to the stack off the GUI thread, and messages from other threads, delivered on it.

Every request to the API server or Tiled may take a while (a slow network, a busy
server); the event loop must not wait for it, or the live plot stalls.

Nothing here calls a Python-side ``Signal.emit()``: in PySide6 6.12.0 on Python 3.11
every such call drops one reference to ``True`` (``emit`` returns it unowned), and after
a few thousand emits the interpreter aborts ("bool_dealloc"; ADR 0700).  Results and
messages go through a thread-safe queue instead, drained on the GUI thread by a timer,
whose signal Qt emits from C++.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QRunnable, QThreadPool, QTimer

logger = logging.getLogger(__name__)

DRAIN_MS = 10
"""How often the GUI thread takes what other threads delivered: far below what a person notices."""


class Mailbox(QObject):
    """Messages put from any thread, handed to ``handler`` on the GUI thread, in order."""

    def __init__(self, handler: Callable[[Any], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.handler = handler
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.timer = QTimer(self)
        self.timer.setInterval(DRAIN_MS)
        self.timer.timeout.connect(self.drain)
        self.timer.start()

    def put(self, message: Any) -> None:
        """Thread-safe."""
        self._queue.put(message)

    def drain(self) -> None:
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                self.handler(message)
            except Exception:
                logger.exception("a message to the GUI failed")

    def stop(self) -> None:
        self.timer.stop()


class _Call(QRunnable):
    def __init__(self, mailbox: Mailbox, function: Callable[[], Any], token: int) -> None:
        super().__init__()
        self.mailbox, self.function, self.token = mailbox, function, token

    def run(self) -> None:
        try:
            result = self.function()
        except Exception as exc:
            self.mailbox.put((self.token, False, exc))
        else:
            self.mailbox.put((self.token, True, result))


class Background(QObject):
    """Runs callables on a thread pool; ``then`` or ``otherwise`` on the GUI thread.

    ``busy`` counts the calls in flight, so tests and screenshots can wait for quiet.
    """

    def __init__(self, parent: QObject | None = None, threads: int = 4) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._mailbox = Mailbox(self._returned, self)
        self._pending: dict[int, tuple[Callable[[Any], None] | None, Callable[[Exception], None] | None]] = {}
        self._next = 0

    @property
    def busy(self) -> int:
        return len(self._pending)

    def call(
        self,
        function: Callable[[], Any],
        then: Callable[[Any], None] | None = None,
        otherwise: Callable[[Exception], None] | None = None,
    ) -> None:
        self._next += 1
        self._pending[self._next] = (then, otherwise)
        self.pool.start(_Call(self._mailbox, function, self._next))

    def _returned(self, message: tuple[int, bool, Any]) -> None:
        token, ok, value = message
        then, otherwise = self._pending.pop(token, (None, None))
        if ok:
            if then is not None:
                then(value)
        elif otherwise is not None:
            otherwise(value)
        else:
            logger.warning("request failed: %s", value)

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until every started call has returned (for shutdown)."""
        done = bool(self.pool.waitForDone(msecs))
        self._mailbox.stop()
        return done
