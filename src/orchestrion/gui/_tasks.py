"""Calls to the stack off the GUI thread, with their results delivered back on it.

Every request to the API server or Tiled may take a while (a slow network, a busy
server); the event loop must not wait for it, or the live plot stalls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

# qtpy re-exports PySide6's Signal with a star import, which mypy does not see as an export.
from qtpy.QtCore import (  # type: ignore[attr-defined]
    QObject,
    QRunnable,
    QThreadPool,
    Signal,
)

logger = logging.getLogger(__name__)

__all__ = ["Background", "Signal"]


class _Relay(QObject):
    """Lives on the GUI thread: signals emitted from a pool thread arrive queued here."""

    finished = Signal(object, object)
    failed = Signal(object, object)


class _Call(QRunnable):
    def __init__(self, relay: _Relay, function: Callable[[], Any], token: object) -> None:
        super().__init__()
        self.relay, self.function, self.token = relay, function, token

    def run(self) -> None:
        try:
            result = self.function()
        except Exception as exc:
            self.relay.failed.emit(self.token, exc)
        else:
            self.relay.finished.emit(self.token, result)


class Background(QObject):
    """Runs callables on a thread pool; ``then`` or ``otherwise`` on the GUI thread.

    ``busy`` counts the calls in flight, so tests and screenshots can wait for quiet.
    """

    def __init__(self, parent: QObject | None = None, threads: int = 4) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._relay = _Relay(self)
        self._relay.finished.connect(self._finished)
        self._relay.failed.connect(self._failed)
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
        self.pool.start(_Call(self._relay, function, self._next))

    def _finished(self, token: int, result: Any) -> None:
        then, _ = self._pending.pop(token, (None, None))
        if then is not None:
            then(result)

    def _failed(self, token: int, error: Exception) -> None:
        _, otherwise = self._pending.pop(token, (None, None))
        if otherwise is not None:
            otherwise(error)
        else:
            logger.warning("request failed: %s", error)

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until every started call has returned (for shutdown)."""
        return bool(self.pool.waitForDone(msecs))
