"""Checking that one run's documents follow the event model, in memory bounded over a run."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any

from orchestrion.errors import OrchestrionError

RECENT_UIDS = 1024  # event uids remembered to catch one used twice (see `RunChecks`)


class DocumentError(OrchestrionError):
    """A document breaks the event model (unknown descriptor, event before start, duplicate uid).

    ``run_uid`` names the run the document belongs to when that can be told, else None.
    """

    def __init__(self, message: str, run_uid: str | None) -> None:
        where = f"run {run_uid}" if run_uid else "run unknown"
        super().__init__(f"{where}: {message}")
        self.run_uid = run_uid


class SeenNumbers:
    """Which integers have been seen, exactly, in memory that does not grow with their count.

    It keeps the lowest and highest number seen and the gaps between them (the numbers
    not seen yet, as ranges): numbers that come in order (a stream's ``seq_num``, a
    scan's point index) leave no gap, so the state is three numbers however long the
    run.  Memory grows only with the numbers skipped or still out of order.
    """

    def __init__(self) -> None:
        self._low: int | None = None
        self._high = 0
        self._gaps: list[tuple[int, int]] = []  # sorted, disjoint [first, last] ranges not seen

    def add(self, number: int) -> bool:
        """Record ``number``; False if it had been seen before."""
        if self._low is None:
            self._low = self._high = number
            return True
        if number > self._high:
            if number > self._high + 1:
                self._gaps.append((self._high + 1, number - 1))
            self._high = number
            return True
        if number < self._low:
            if number < self._low - 1:
                self._gaps.insert(0, (number + 1, self._low - 1))
            self._low = number
            return True
        at = bisect.bisect_right(self._gaps, (number, self._high + 1)) - 1
        if at < 0 or self._gaps[at][1] < number:
            return False
        first, last = self._gaps[at]
        self._gaps[at : at + 1] = [gap for gap in ((first, number - 1), (number + 1, last)) if gap[0] <= gap[1]]
        return True

    def __contains__(self, number: object) -> bool:
        if self._low is None or not isinstance(number, int) or not self._low <= number <= self._high:
            return False
        at = bisect.bisect_right(self._gaps, (number, self._high + 1)) - 1
        return at < 0 or self._gaps[at][1] < number

    def missing(self, first: int, last: int) -> list[tuple[int, int]]:
        """The ranges of numbers from ``first`` to ``last`` not seen."""
        if self._low is None:
            return [(first, last)] if first <= last else []
        ranges = [(first, min(last, self._low - 1)), *self._gaps, (max(first, self._high + 1), last)]
        return [(max(a, first), min(b, last)) for a, b in ranges if max(a, first) <= min(b, last)]

    @property
    def highest(self) -> int | None:
        """The highest number seen (None: none yet)."""
        return None if self._low is None else self._high

    @property
    def gaps(self) -> int:
        """Ranges of numbers not seen between the lowest and the highest: what memory it holds."""
        return len(self._gaps)


class RecentKeys:
    """The last ``size`` keys seen: a bounded window, for keys that come in no order."""

    def __init__(self, size: int) -> None:
        self._order: deque[Hashable] = deque()
        self._keys: set[Hashable] = set()
        self.size = size

    def add(self, key: Hashable) -> bool:
        """Record ``key``; False if it is among the last ``size`` keys."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self.size:
            self._keys.discard(self._order.popleft())
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._keys


class RunChecks:
    """Follows one run through its documents; `check` raises `DocumentError` on a bad one.

    Made per run (by a `RunRouter` factory), so it knows only its own run: descriptor
    uids used twice, events used twice, and documents after the stop.  An event is the
    same event twice when its stream's ``seq_num`` was seen already (a stream numbers
    its events in order, so this holds every event of the run in a few numbers,
    `SeenNumbers`), or its uid is among the last `RECENT_UIDS` (a bounded window: uids
    come in no order).
    """

    def __init__(self, run_uid: str) -> None:
        self.run_uid = run_uid
        self._descriptors: dict[str, str] = {}  # descriptor uid -> stream
        self._seq_nums: dict[str, SeenNumbers] = {}  # stream -> the seq_nums of its events
        self._recent = RecentKeys(RECENT_UIDS)
        self._stopped = False
        # What arrived, to hold against the stop document's ``num_events``: the events of
        # each stream (their seq_nums, above), and the events each external data key's
        # stream_datum documents cover.
        self._data_key_of: dict[str, str] = {}  # stream_resource uid -> its data key
        self._rows: dict[tuple[str, str], int] = {}  # (stream, data key) -> events its stream_datums cover
        self.count_problem: str | None = None
        """Set at the stop when fewer (or more) points arrived than the RunEngine made."""

    def check(self, name: str, doc: Mapping[str, Any]) -> None:
        if self._stopped:
            raise DocumentError(f"{name} arrived after the run's stop document", self.run_uid)
        if name == "descriptor":
            if doc["uid"] in self._descriptors:
                raise DocumentError(f"descriptor uid {doc['uid']} is used twice", self.run_uid)
            # A stream's descriptors share its seq_num counter (bluesky numbers per stream).
            stream = str(doc.get("name") or doc["uid"])
            self._descriptors[doc["uid"]] = stream
            self._seq_nums.setdefault(stream, SeenNumbers())
        elif name == "event":
            self._event(doc["uid"], doc.get("descriptor"), doc.get("seq_num"))
        elif name == "event_page":
            for uid, seq_num in zip(doc["uid"], doc.get("seq_num") or [None] * len(doc["uid"]), strict=True):
                self._event(uid, doc.get("descriptor"), seq_num)
        elif name == "stream_resource":
            self._data_key_of[str(doc.get("uid"))] = str(doc.get("data_key"))
        elif name == "stream_datum":
            datum_stream = self._descriptors.get(str(doc.get("descriptor")))
            key = self._data_key_of.get(str(doc.get("stream_resource")))
            seq_nums = doc.get("seq_nums") or {}
            if datum_stream is not None and key is not None:
                covered = int(seq_nums.get("stop", 0)) - int(seq_nums.get("start", 0))
                self._rows[datum_stream, key] = self._rows.get((datum_stream, key), 0) + covered
        elif name == "stop":
            self._stopped = True
            self.count_problem = self._counted(doc.get("num_events") or {})
            self._seq_nums.clear()

    def _counted(self, num_events: Mapping[str, Any]) -> str | None:
        """What differs between the points the RunEngine made (``num_events``) and those
        that arrived: a document lost on the way would otherwise leave a shorter run that
        reads as whole."""
        differences = []
        for stream, made in sorted(num_events.items()):
            if not isinstance(made, int):
                continue
            seen = self._seq_nums.get(stream)
            highest = seen.highest if seen is not None else None
            if seen is not None and highest is not None:  # the stream had events (bluesky numbers them 1..made)
                missing = seen.missing(1, made)
                if missing:
                    lacking = sum(last - first + 1 for first, last in missing)
                    numbers = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in missing)
                    differences.append(f"stream {stream!r} has {made - lacking} of its {made} events "
                                       f"(seq_num {numbers} never arrived)")  # fmt: skip
                if highest > made:
                    differences.append(f"stream {stream!r} has events past its {made} (seq_num {highest})")
            for (rows_stream, key), rows in sorted(self._rows.items()):
                if rows_stream == stream and rows != made:
                    differences.append(f"the stream_datum documents of data key {key!r} of stream {stream!r} "
                                       f"cover {rows} of its {made} events")  # fmt: skip
        if not differences:
            return None
        return "documents were lost on the way (held against the stop document's num_events): " + "; ".join(differences)

    def _event(self, uid: str, descriptor: Any, seq_num: Any) -> None:
        stream = self._descriptors.get(str(descriptor))
        seen = self._seq_nums.get(stream) if stream is not None else None
        if not self._recent.add(uid):
            raise DocumentError(f"event uid {uid} is used twice", self.run_uid)
        if seen is not None and isinstance(seq_num, int) and not seen.add(seq_num):
            raise DocumentError(f"event {uid}: seq_num {seq_num} of stream {stream!r} is used twice", self.run_uid)
