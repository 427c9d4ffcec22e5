"""Checking that one run's documents follow the event model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrion.errors import OrchestrionError


class DocumentError(OrchestrionError):
    """A document breaks the event model (unknown descriptor, event before start, duplicate uid).

    ``run_uid`` names the run the document belongs to when that can be told, else None.
    """

    def __init__(self, message: str, run_uid: str | None) -> None:
        where = f"run {run_uid}" if run_uid else "run unknown"
        super().__init__(f"{where}: {message}")
        self.run_uid = run_uid


class RunChecks:
    """Follows one run through its documents; `check` raises `DocumentError` on a bad one.

    Made per run (by a `RunRouter` factory), so it knows only its own run: descriptor
    and event uids used twice, and documents after the stop.
    """

    def __init__(self, run_uid: str) -> None:
        self.run_uid = run_uid
        self._descriptors: set[str] = set()
        self._events: set[str] = set()
        self._stopped = False

    def check(self, name: str, doc: Mapping[str, Any]) -> None:
        if self._stopped:
            raise DocumentError(f"{name} arrived after the run's stop document", self.run_uid)
        if name == "descriptor":
            if doc["uid"] in self._descriptors:
                raise DocumentError(f"descriptor uid {doc['uid']} is used twice", self.run_uid)
            self._descriptors.add(doc["uid"])
        elif name in ("event", "event_page"):
            uids = [doc["uid"]] if name == "event" else list(doc["uid"])
            for uid in uids:
                if uid in self._events:
                    raise DocumentError(f"event uid {uid} is used twice", self.run_uid)
            self._events.update(uids)
        elif name == "stop":
            self._stopped = True
            self._events.clear()
