"""Routing documents to per-run callbacks, and keeping one stage's failure within its run.

`RunsRouter` is event-model's `RunRouter` (one callback per run, made by a factory at
the run's start; the router maps descriptors to runs) that reports a document it cannot
route instead of raising, and can close the runs still open.  `Stage` wraps one stage
of one run: the first exception is logged with the run's uid, the stage is told to give
up (``abandon``) and gets no more of that run's documents.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

from event_model import Filler, RunRouter, pack_event_page
from event_model.documents import Event

from ._checks import DocumentError

logger = logging.getLogger(__name__)

DocumentCallback = Callable[[str, dict[str, Any]], Any]
Factory = Callable[[str, dict[str, Any]], tuple[list[DocumentCallback], list[Any]]]


class _NoFilling:
    """The RunRouter's per-run filler, when nothing refers to external files to fill:
    every document comes back as it went in."""

    def __init__(self, handler_registry: Mapping[str, Any], *, root_map: Any = None, inplace: bool = False) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        return _same


def _same(doc: Any) -> Any:
    return doc


class RunsRouter(RunRouter):
    """A `RunRouter` that logs documents it cannot route (with their run) and goes on.

    ``label`` names it in the log.  Each factory-made callback of a run that has not
    stopped is closed by `close` (if it has a ``close``).
    """

    def __init__(self, factories: list[Factory], label: str) -> None:
        # Any DocumentRouter will do as the filler (event-model's documentation); its stub says Filler.
        super().__init__(factories, filler_class=cast("type[Filler]", _NoFilling))
        self.label = label
        self._open: dict[str, list[DocumentCallback]] = {}
        self._unknown: set[str] = set()

    def __call__(self, name: str, doc: dict[str, Any], validate: bool = False) -> tuple[str, dict[str, Any]]:
        try:
            return super().__call__(name, doc, validate)
        except DocumentError as exc:
            logger.error("%s: %s", self.label, exc)
        except KeyError as exc:
            # The router's own lookup of an event's descriptor, and nothing else.
            if name not in ("event", "event_page") or exc.args != (doc.get("descriptor"),):
                raise
            descriptor = str(doc["descriptor"])
            if descriptor not in self._unknown:  # once per descriptor, not per event
                self._unknown.add(descriptor)
                problem = "refers to unknown descriptor" if self._open else "arrived before any start document:"
                logger.error("%s: run unknown: %s %s %s", self.label, name, problem, descriptor)
        return name, doc

    def start(self, doc: Any) -> None:
        uid = str(doc["uid"])
        if uid in self._open:
            raise DocumentError("a second start document with the same uid", uid)
        self._open[uid] = []
        try:
            super().start(doc)
        except Exception:
            del self._open[uid]
            raise

    def descriptor(self, doc: Any) -> None:
        self._known_run(doc, "descriptor")
        super().descriptor(doc)

    def _known_run(self, doc: Mapping[str, Any], name: str) -> str:
        uid = str(doc["run_start"])
        if uid not in self._open:
            raise DocumentError(f"{name} arrived before the run's start document", uid)
        return uid

    def stream_resource(self, doc: Any) -> None:
        # ``run_start`` is optional in the schema (the RunEngine fills it in); without it
        # the one run open is the only candidate.  The router itself would raise KeyError.
        uid = str(doc.get("run_start") or "")
        if not uid and len(self._open) == 1:
            uid = next(iter(self._open))
            doc = {**doc, "run_start": uid}
        if uid not in self._open:
            raise DocumentError(f"stream_resource {doc.get('uid')} names no open run", uid or None)
        super().stream_resource(doc)

    def stream_datum(self, doc: Any) -> None:
        if doc["stream_resource"] in self._stream_resources:
            super().stream_datum(doc)
            return
        # A datum of no resource seen: its run (by the descriptor) is told, so the frames
        # it promises are reported missing there, not dropped unsaid.
        run_uid = self._descriptor_to_start.get(doc.get("descriptor"))
        if run_uid is None:
            raise DocumentError(f"stream_datum {doc.get('uid')} refers to unknown stream_resource "
                                f"{doc['stream_resource']} and descriptor {doc.get('descriptor')}", None)  # fmt: skip
        for callback in self._factory_cbs_by_start.get(run_uid, []):
            callback("stream_datum", doc)

    def event(self, doc: Event) -> Event:
        # Routed as a page of one, without unpacking it again (the default does).
        self.event_page(pack_event_page(doc))
        return doc

    def stop(self, doc: Any) -> None:
        uid = self._known_run(doc, "stop")
        try:
            super().stop(doc)
        finally:
            del self._open[uid]
            # The router keeps its runs' resources for ever: bounded here, run by run.
            for resource in [r for r, run in self._stream_resources.items() if run == uid]:
                del self._stream_resources[resource]

    def track(self, run_uid: str, callback: DocumentCallback) -> None:
        """Remember ``callback`` of ``run_uid`` for `close` (factories call this)."""
        self._open.setdefault(run_uid, []).append(callback)

    def close(self) -> None:
        """Close the callbacks of runs that have not stopped."""
        for callbacks in list(self._open.values()):
            for callback in callbacks:
                close = getattr(callback, "close", None)
                if callable(close):
                    close()
        self._open.clear()


class Stage:
    """One stage of one run: after its first failure it is abandoned and skips the rest.

    ``abandon(reason)`` of the wrapped callback is called (if it has one) when it fails.
    ``failure`` says what went wrong, or None.
    """

    def __init__(self, callback: DocumentCallback, label: str, run_uid: str) -> None:
        self.callback, self.label, self.run_uid = callback, label, run_uid
        self.failure: str | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if self.failure is not None:
            return
        try:
            self.callback(name, doc)
        except Exception as exc:
            self.fail(f"{self.label} failed at a {name} document: {type(exc).__name__}: {exc}", exc)

    def fail(self, reason: str, exc: BaseException | None = None, *, logged: bool = False) -> None:
        """Give the stage up for this run with ``reason`` (``logged``: already said)."""
        if self.failure is not None:
            return
        self.failure = reason
        if not logged:
            logger.error("run %s: %s; it skips the rest of the run", self.run_uid, reason, exc_info=exc)
        abandon = getattr(self.callback, "abandon", None)
        if callable(abandon):
            try:
                abandon(reason)
            except Exception:
                logger.exception("run %s: %s could not be closed", self.run_uid, self.label)

    def close(self) -> None:
        close = getattr(self.callback, "close", None)
        if callable(close):
            close()
