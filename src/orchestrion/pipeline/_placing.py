"""Which run a document belongs to, for those that pass documents on without routing them.

A RunRouter makes callbacks per run; the places that only carry documents (the helper
process's feeder, the document bus's publisher) need the same answer without one: which
run a descriptor's events, a resource's datums, a detector's stream documents are of.
Both keep what they carry per run, so a kind of document left out here is a document
dropped from a run (found: `stream_datum`, missing from the feeder's list, lost a
detector's point in a take-over while the run read "success").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REFERENCES = {"descriptor", "resource", "stream_resource"}
"""Documents that later documents of the run name by their uid."""


class RunPlacer:
    """Places each document of a stream of runs in its run (`place`); what it learns of a
    run goes at the run's stop, so it holds only the open runs."""

    def __init__(self) -> None:
        self._run_of_ref: dict[str, str] = {}  # descriptor or resource uid -> run uid
        self._refs: dict[str, list[str]] = {}  # open run uid -> its descriptors and resources

    @property
    def open_runs(self) -> list[str]:
        """Runs started and not stopped, oldest first."""
        return list(self._refs)

    def place(self, name: str, doc: Mapping[str, Any]) -> str | None:
        """The uid of the run ``doc`` belongs to; None when no run known to this placer has it."""
        run: str | None
        if name == "start":
            run = str(doc["uid"])
            self._refs.setdefault(run, [])
            return run
        if name in REFERENCES or name == "stop":
            # ``run_start`` is optional for resources in the schema (the RunEngine fills
            # it in); without it, the one run open is the only candidate.
            named = doc.get("run_start")
            run = str(named) if named is not None else self._only_open_run()
            if run is None:
                return None
            if name == "stop":
                for ref in self._refs.pop(run, []):
                    self._run_of_ref.pop(ref, None)
            else:
                self._run_of_ref[str(doc["uid"])] = run
                self._refs.setdefault(run, []).append(str(doc["uid"]))
            return run
        if name in ("event", "event_page"):
            return self._run_of_ref.get(str(doc.get("descriptor")))
        if name in ("datum", "datum_page"):
            return self._run_of_ref.get(str(doc.get("resource")))
        if name == "stream_datum":
            # Its frames belong to the events of its descriptor's stream.
            return self._run_of_ref.get(str(doc.get("descriptor"))) or self._run_of_ref.get(
                str(doc.get("stream_resource"))
            )
        return None

    def _only_open_run(self) -> str | None:
        runs = self.open_runs
        return runs[0] if len(runs) == 1 else None
