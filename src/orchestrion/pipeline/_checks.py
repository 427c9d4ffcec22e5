"""Checking that a document stream follows the event model, and which run each document is in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrion.errors import OrchestrionError


class DocumentError(OrchestrionError):
    """A document breaks the event model (unknown descriptor, event before start, duplicate uid).

    ``run_uid`` names the run the document belongs to when that can be told, else None.
    """

    def __init__(self, message: str, run_uid: str | None, *, reported: bool = False) -> None:
        where = f"run {run_uid}" if run_uid else "run unknown"
        super().__init__(f"{where}: {message}")
        self.run_uid = run_uid
        self.reported = reported  # the run was already reported broken: do not log again


@dataclass
class _RunState:
    descriptors: set[str] = field(default_factory=set)
    event_uids: set[str] = field(default_factory=set)
    stopped: bool = False
    broken: bool = False


class DocumentChecker:
    """Follows runs through their documents; `check` names a document's run or raises.

    Several runs may be open at once (documents carry their run through the start
    uid and descriptor uids).  An event whose descriptor is unknown is attributed to the
    only open run if there is exactly one, since a RunEngine has one run open at a time.
    """

    def __init__(self) -> None:
        self._runs: dict[str, _RunState] = {}
        self._descriptor_run: dict[str, str] = {}
        self._unknown: set[str] = set()

    def open_runs(self) -> list[str]:
        return [uid for uid, state in self._runs.items() if not state.stopped and not state.broken]

    def mark_broken(self, run_uid: str) -> None:
        """Later documents of ``run_uid`` raise `DocumentError` with ``reported`` set."""
        self._runs.setdefault(run_uid, _RunState()).broken = True

    def forget(self, run_uid: str) -> None:
        """Drop what is known of a finished run, except that its uid was used."""
        state = self._runs.get(run_uid)
        if state is None:
            return
        for descriptor in state.descriptors:
            self._descriptor_run.pop(descriptor, None)
        state.descriptors.clear()
        state.event_uids.clear()
        state.stopped = True

    def check(self, name: str, doc: Mapping[str, Any]) -> str | None:
        """The uid of the run ``doc`` belongs to (None for documents outside any run)."""
        if name == "start":
            uid = str(doc["uid"])
            if uid in self._runs:
                raise DocumentError("a second start document with the same uid", uid)
            self._runs[uid] = _RunState()
            return uid
        if name == "descriptor":
            run_uid = str(doc["run_start"])
            state = self._live(run_uid, f"descriptor {doc['uid']}")
            if doc["uid"] in self._descriptor_run:
                raise DocumentError(f"descriptor uid {doc['uid']} is used twice", run_uid)
            state.descriptors.add(doc["uid"])
            self._descriptor_run[doc["uid"]] = run_uid
            return run_uid
        if name in ("event", "event_page"):
            run_uid = self._run_of_descriptor(str(doc["descriptor"]), name)
            state = self._live(run_uid, name)
            uids = [doc["uid"]] if name == "event" else list(doc["uid"])
            for uid in uids:
                if uid in state.event_uids:
                    raise DocumentError(f"event uid {uid} is used twice", run_uid)
                state.event_uids.add(uid)
            return run_uid
        if name == "stop":
            run_uid = str(doc["run_start"])
            self._live(run_uid, "stop")
            return run_uid
        if name in ("resource", "stream_resource") and "run_start" in doc:
            run_uid = str(doc["run_start"])
            self._live(run_uid, name)
            return run_uid
        # datum, stream_datum: attributed to the run that is open, if exactly one is.
        open_runs = self.open_runs()
        return open_runs[0] if len(open_runs) == 1 else None

    def _run_of_descriptor(self, descriptor: str, what: str) -> str:
        run_uid = self._descriptor_run.get(descriptor)
        if run_uid is not None:
            return run_uid
        open_runs = self.open_runs()
        guess = open_runs[0] if len(open_runs) == 1 else None
        # One report per unknown descriptor, not one per event.
        reported = descriptor in self._unknown
        self._unknown.add(descriptor)
        if guess is None and not open_runs:
            raise DocumentError(f"{what} before any start document (descriptor {descriptor})", None, reported=reported)
        raise DocumentError(f"{what} refers to unknown descriptor {descriptor}", guess, reported=reported)

    def _live(self, run_uid: str, what: str) -> _RunState:
        state = self._runs.get(run_uid)
        if state is None:
            raise DocumentError(f"{what} arrived before the run's start document", run_uid)
        if state.broken:
            raise DocumentError(f"{what} of a run already reported broken", run_uid, reported=True)
        if state.stopped:
            raise DocumentError(f"{what} arrived after the run's stop document", run_uid)
        return state
