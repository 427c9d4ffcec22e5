"""Fits on a run's points while it runs: a document callback for a RunEngine."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from event_model import DocumentRouter, unpack_event_page
from event_model.documents import Event, EventDescriptor, EventPage, RunStart, RunStop
from numpy.typing import NDArray

from orchestrion.schema import COMPLETE_KEY, PRIMARY

from ._fits import FitResult

logger = logging.getLogger(__name__)

Fit = Callable[[NDArray[np.float64], NDArray[np.float64]], FitResult | None]


class LiveFit(DocumentRouter):
    """Refits ``y`` against ``x`` over a run's points, every ``every`` points and at the stop.

    Subscribe it to a RunEngine (``RE.subscribe(live)``, or an embedded session's extra
    callbacks): it reads the ``primary`` stream, one event per scan point.  The
    ``bundled`` stream exists only after the hand-over to post-processing (in its
    process, or on the document bus): pass ``stream=BUNDLED`` to fit there.  ``x``
    defaults to the run's first hinted dimension; incomplete points (the bundler's
    ``bundle-complete`` false) are left out.  ``results`` holds each run's last fit;
    ``on_fit(run_uid, result)`` is called after each fit.  A fit that fails is logged
    and leaves the previous result.
    """

    def __init__(
        self,
        fit: Fit,
        *,
        y: str = "sequencer-bright_fraction",
        x: str | None = None,
        stream: str = PRIMARY,
        every: int = 10,
        on_fit: Callable[[str, FitResult], Any] | None = None,
    ) -> None:
        super().__init__()
        self.fit, self.y, self.x, self.stream = fit, y, x, stream
        self.every = max(1, every)
        self.on_fit = on_fit
        self.results: dict[str, FitResult] = {}
        self._x_key: dict[str, str | None] = {}
        self._descriptors: dict[str, str] = {}
        self._points: dict[str, tuple[list[float], list[float]]] = {}

    def start(self, doc: RunStart) -> RunStart:
        x = self.x
        if x is None:
            dimensions = (doc.get("hints") or {}).get("dimensions") or []
            x = dimensions[0][0][0] if dimensions and dimensions[0][0] else None
        self._x_key[doc["uid"]] = x
        self._points[doc["uid"]] = ([], [])
        return doc

    def descriptor(self, doc: EventDescriptor) -> EventDescriptor:
        if doc.get("name") == self.stream and doc["run_start"] in self._points:
            self._descriptors[doc["uid"]] = doc["run_start"]
        return doc

    def event(self, doc: Event) -> Event:
        run_uid = self._descriptors.get(doc["descriptor"])
        if run_uid is None:
            return doc
        data = doc["data"]
        x_key = self._x_key[run_uid]
        if data.get(COMPLETE_KEY, True) is False or x_key not in data or self.y not in data:
            return doc
        x, y = float(data[x_key]), float(data[self.y])
        if math.isfinite(x) and math.isfinite(y):
            xs, ys = self._points[run_uid]
            xs.append(x)
            ys.append(y)
            if len(xs) % self.every == 0:
                self._refit(run_uid)
        return doc

    def event_page(self, doc: EventPage) -> EventPage:
        for event in self._unpack(doc):
            self.event(event)
        return doc

    @staticmethod
    def _unpack(doc: EventPage) -> list[Event]:
        return list(unpack_event_page(doc))

    def stop(self, doc: RunStop) -> RunStop:
        run_uid = doc["run_start"]
        if run_uid in self._points:
            self._refit(run_uid)
            del self._points[run_uid]
            self._x_key.pop(run_uid, None)
            self._descriptors = {k: v for k, v in self._descriptors.items() if v != run_uid}
        return doc

    def _refit(self, run_uid: str) -> None:
        xs, ys = self._points[run_uid]
        if not xs:
            return
        try:
            result = self.fit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))
        except Exception:
            logger.exception("run %s: live fit failed", run_uid)
            return
        if result is not None:
            self.results[run_uid] = result
            if self.on_fit is not None:
                self.on_fit(run_uid, result)
