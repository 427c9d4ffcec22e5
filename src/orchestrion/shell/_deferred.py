"""Parts of a session made after its prompt, in one background thread, waited for at first use.

The catalog (Tiled's server, catalog and client in the session's own process), its
databroker v1 view and bluesky's BestEffortCallback (matplotlib) are seconds of imports
that a user at the prompt does not need yet (issue 16, ADR 0821).  Each is a `Deferred`:
made by `Background`'s thread once the prompt is up, and waited for by whoever uses it
first.  In the user's namespace a `Pending` stands for it until it is made; the session
then puts the object itself there (`ShellSession.settle`).  A part that cannot be made
raises `PartUnavailable`, one line naming the part and the reason, at each use.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from orchestrion.errors import OrchestrionError

__all__ = ["Background", "Deferred", "PartUnavailable", "Pending"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PartUnavailable(OrchestrionError):
    """A part of the session that could not be made: its name and why."""

    def __init__(self, part: str, reason: str) -> None:
        self.part = part
        self.reason = reason
        super().__init__(f"{part} is not available: {reason}")


class Deferred(Generic[T]):
    """One part of the session, made once by ``make``: in the background thread, or (with
    no ``start``) in the main thread at its first use there."""

    def __init__(
        self, part: str, make: Callable[[], T], start: Callable[[], None] | None, report: Callable[[str, str], Any]
    ) -> None:
        self.part = part
        self._make = make
        self._start = start
        self._report = report
        self._made = threading.Event()
        self._value: T | None = None
        self._problem: str | None = None

    @property
    def done(self) -> bool:
        """Made, or known not to be available."""
        return self._made.is_set()

    @property
    def problem(self) -> str | None:
        """Why the part is not available (None: made, or not yet tried)."""
        return self._problem

    def value(self) -> T:
        """The part, made first if it has to be (this waits); raises `PartUnavailable`."""
        if not self._made.is_set():
            if self._start is not None:
                self._start()  # used before the prompt started the thread: start it now
            elif threading.current_thread() is threading.main_thread():
                self.run()
            self._made.wait()
        if self._problem is not None:
            # Not chained to the original error: the message is the one line a user
            # sees (its traceback is in the session's log file).
            raise PartUnavailable(self.part, self._problem)
        return self._value  # type: ignore[return-value]  # set whenever there is no problem

    def made(self) -> T | None:
        """The part if it has been made, without waiting."""
        return self._value if self._made.is_set() and self._problem is None else None

    def fail(self, reason: str) -> None:
        """Known not to be available (before the thread tries it, or because it failed)."""
        self._problem = reason
        self._made.set()

    def run(self) -> None:
        """Make the part; a failure is recorded and reported (a part already known not to
        be available has been reported: it is not tried)."""
        if self._made.is_set():
            return
        started = time.monotonic()
        try:
            self._value = self._make()
            logger.info("session: %s made in %.2f s", self.part, time.monotonic() - started)
        except PartUnavailable as exc:  # a part it is made from is missing
            self._problem = f"no {exc.part} ({exc.reason})"
        except Exception as exc:
            # Into the log file only: the console would print it over the user's prompt.
            logger.info("session: %s could not be made", self.part, exc_info=True)
            self._problem = _reason(exc)
        self._made.set()
        if self._problem is not None:
            self._report(self.part, self._problem)


_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Failure)\b.*: \S")


def _reason(error: BaseException) -> str:
    """One line of ``error``'s message: the first, unless the message is a traceback (Tiled
    passes on the one its catalog's set-up process printed); then its last error line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    if len(lines) > 1 and errors:
        return errors[-1]
    return lines[0]


class Background:
    """Makes the deferred parts one after another in one daemon thread, started once.

    One thread, not one per part: the parts are imports, which hold the interpreter's
    lock, so they would not run faster side by side; in order, the first to be needed
    (the live table, at the first run) is made first.
    """

    def __init__(self, report: Callable[[str, str], Any] = lambda part, reason: None) -> None:
        """``report(part, reason)`` is called (in the thread) for each part that fails."""
        self._parts: list[Deferred[Any]] = []
        self._next = 0  # the first part not yet taken by the thread
        self._report = report
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def defer(self, part: str, make: Callable[[], T], *, main_thread: bool = False) -> Deferred[T]:
        """A part, made after the ones deferred before it (so ``make`` may use them).

        ``main_thread``: made not by the thread but in the main thread, at its first use
        there (objects that must belong to it, such as Qt's); another thread's use waits.
        """
        if main_thread:
            return Deferred(part, make, None, self._report)
        deferred: Deferred[T] = Deferred(part, make, self.start, self._report)
        with self._lock:
            self._parts.append(deferred)
        return deferred

    def start(self) -> None:
        """Start making the parts not yet made (a no-op while the thread runs)."""
        with self._lock:
            if self._thread is not None or self._next == len(self._parts):
                return
            self._thread = threading.Thread(target=self._run, name="orchestrion-session-parts", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._next == len(self._parts):
                    self._thread = None  # a part deferred later starts a new thread
                    return
                deferred = self._parts[self._next]
                self._next += 1
            deferred.run()

    def join(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` s) for the parts to be made; whether they all are."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return all(deferred.done for deferred in self._parts)


class Pending:
    """Stands in the user's namespace for a deferred part: using it waits for the part and
    passes the use on (attributes, items, calls, iteration, repr)."""

    __slots__ = ("_deferred",)

    def __init__(self, deferred: Deferred[Any]) -> None:
        object.__setattr__(self, "_deferred", deferred)

    def _part(self) -> Any:
        return self._deferred.value()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._part(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._part(), name, value)

    def __getitem__(self, key: Any) -> Any:
        return self._part()[key]

    def __contains__(self, item: Any) -> bool:
        return item in self._part()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._part())

    def __len__(self) -> int:
        return len(self._part())

    def __bool__(self) -> bool:
        return bool(self._part())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._part()(*args, **kwargs)

    def __dir__(self) -> list[str]:
        return dir(self._part())

    def __repr__(self) -> str:
        # Showing the name is no error: IPython would print a formatter's traceback.
        try:
            return repr(self._part())
        except PartUnavailable as exc:
            return f"<{exc}>"

    def __str__(self) -> str:
        try:
            return str(self._part())
        except PartUnavailable as exc:
            return f"<{exc}>"
