"""The bundler: one synchronized record per scan point, as a new event-model stream.

Readout roles and how the bundler treats their streams:

- monitored streams (default: "primary") report once per scan point; their events are
  matched by the point id (the data key ``point-index``, or the event's ``seq_num``
  when a stream has no such key);
- async streams (any other stream, e.g. ``field-field_monitor``) report on their own
  clock; each bundled point carries, for every async data key, the last value whose
  reading timestamp is at or before the point's time;
- baseline, analysis and the output stream itself are not joined (they are passed on).

A point's time is the latest ``time`` of its monitored events.  A point is emitted,
once, as soon as every monitored stream has reported for it (``async_wait=0``, the
default: the async values are the last ones received by then; a RunEngine emits its
documents in time order, so they are the last ones at or before the point).  Transports
that may reorder streams set ``async_wait`` (s): a point then also waits until every
async stream has delivered a reading stamped at or after the point's time, or until a
monitored reading ``async_wait`` seconds younger than the point arrives; with
``async_wait=math.inf`` the join is exact whatever the arrival order.  At the stop
document every point still held is emitted: those missing a monitored reading with
``bundle-complete`` false and fill values, never dropped.  A start document may say
which streams are which with ``bundle: {monitored: [...], async: [...], point_key: ...}``.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from event_model import unpack_event_page

from orchestrion.schema import ANALYSIS, BASELINE, BUNDLED, COMPLETE_KEY, POINT_KEY, PRIMARY, SEQUENCES

from ._checks import DocumentError, RecentKeys, RunChecks, SeenNumbers
from ._external import internal_keys
from ._routing import RunsRouter

logger = logging.getLogger(__name__)

NOT_JOINED = (BASELINE, ANALYSIS, SEQUENCES, BUNDLED)
RECENT_POINTS = 4096  # point ids that are no integers, remembered once bundled
ASYNC_KEPT = 256  # readings of an async key beyond which those no point can need are let go

DocumentCallback = Callable[[str, dict[str, Any]], Any]


def fill_value(data_key: Mapping[str, Any]) -> Any:
    """What stands for a missing reading: NaN for numbers, zero, empty text or array."""
    dtype = data_key.get("dtype")
    if dtype == "number":
        return math.nan
    if dtype == "integer":
        return 0
    if dtype == "boolean":
        return False
    if dtype == "string":
        return ""
    if dtype == "array":
        shape = [int(n) for n in data_key.get("shape") or [] if n is not None]
        size = math.prod(shape) if shape else 0
        kind = str(data_key.get("dtype_numpy", "<f8"))
        zero: Any = math.nan if "f" in kind else 0
        flat = [zero] * size
        # nested lists of the declared shape
        for n in reversed(shape[1:]):
            flat = [flat[i : i + n] for i in range(0, len(flat), n)]
        return flat
    return None


@dataclass
class _Reading:
    time: float
    data: dict[str, Any]
    timestamps: dict[str, float]


@dataclass
class _AsyncKey:
    stream: str
    times: list[float] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    def add(self, timestamp: float, value: Any) -> None:
        at = bisect.bisect_right(self.times, timestamp)
        self.times.insert(at, timestamp)
        self.values.insert(at, value)

    def at_or_before(self, time: float) -> tuple[Any, float] | None:
        at = bisect.bisect_right(self.times, time)
        return None if at == 0 else (self.values[at - 1], self.times[at - 1])

    def forget_before(self, time: float) -> None:
        """Let go of the readings older than the last one at or before ``time``."""
        drop = bisect.bisect_right(self.times, time) - 1
        if drop > 0:
            del self.times[:drop]
            del self.values[:drop]


class _Emitted:
    """The points bundled so far: integer point ids (in scan order, mostly) as a few
    numbers (`SeenNumbers`), any other id in a bounded window of the latest."""

    def __init__(self) -> None:
        self._numbers = SeenNumbers()
        self._others = RecentKeys(RECENT_POINTS)

    def add(self, point: Any) -> None:
        if isinstance(point, int) and not isinstance(point, bool):
            self._numbers.add(point)
        else:
            self._others.add(point)

    def __contains__(self, point: object) -> bool:
        if isinstance(point, int) and not isinstance(point, bool):
            return point in self._numbers
        return point in self._others


class _RunBundle:
    """The state of one run: points waiting for readings, async histories."""

    def __init__(self, start: Mapping[str, Any], monitored: Iterable[str], point_key: str, output: str) -> None:
        hints = start.get("bundle") or {}
        self.uid = str(start["uid"])
        self.monitored: tuple[str, ...] = tuple(hints.get("monitored") or monitored)
        declared = hints.get("async")
        self.declared_async: tuple[str, ...] | None = None if declared is None else tuple(declared)
        self.point_key = str(hints.get("point_key") or point_key)
        self.output = output
        self.streams: dict[str, str] = {}  # descriptor uid -> stream name
        self.data_keys: dict[str, dict[str, Any]] = {}  # stream -> its data keys
        self.object_keys: dict[str, dict[str, Any]] = {}
        self.async_keys: dict[str, _AsyncKey] = {}
        self.watermark: dict[str, float] = {}  # async stream -> latest reading timestamp
        self.points: dict[Any, dict[str, _Reading]] = {}
        self.emitted = _Emitted()
        self.descriptor: dict[str, Any] | None = None
        self.seq_num = 0
        self.late_async: set[str] = set()
        self.latest_monitored = -math.inf

    def kind(self, stream: str) -> str:
        if stream in self.monitored:
            return "monitored"
        if self.declared_async is not None:
            return "async" if stream in self.declared_async else "other"
        return "other" if stream in NOT_JOINED or stream == self.output else "async"

    def async_streams(self) -> set[str]:
        known = {s for s in self.data_keys if self.kind(s) == "async"}
        return known | set(self.declared_async or ())


class RunBundler:
    """Joins one run's streams into one event per scan point, in the stream ``output_stream``.

    Made per run (by a `RunRouter` factory: see `Bundler`).  Every document received is
    passed on to ``emit`` unchanged (the stop after the last bundled points, with the
    bundled count added to its ``num_events``); the bundled descriptor and events are
    passed on as they become ready.
    """

    def __init__(
        self,
        start: Mapping[str, Any],
        emit: DocumentCallback,
        *,
        monitored_streams: Iterable[str] = (PRIMARY,),
        point_key: str = POINT_KEY,
        output_stream: str = BUNDLED,
        async_wait: float = 0.0,
    ) -> None:
        self._emit = emit
        self.async_wait = float(async_wait)
        self._run = _RunBundle(start, monitored_streams, point_key, output_stream)

    @property
    def monitored_streams(self) -> tuple[str, ...]:
        """The streams each point has a reading of (the start's ``bundle`` may name them)."""
        return self._run.monitored

    @property
    def bundled_points(self) -> int:
        """Points bundled so far."""
        return self._run.seq_num

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        run = self._run
        if name == "stop":
            self._finish(run)
            doc = dict(doc)
            num_events = dict(doc.get("num_events") or {})
            num_events[run.output] = run.seq_num
            doc["num_events"] = num_events
            self._emit(name, doc)
            return
        self._emit(name, doc)
        if name == "descriptor":
            self._descriptor(run, doc)
        elif name == "event":
            self._event(run, doc)
        elif name == "event_page":
            for event in unpack_event_page(doc):  # type: ignore[arg-type]
                self._event(run, event)

    def _descriptor(self, run: _RunBundle, doc: Mapping[str, Any]) -> None:
        stream = str(doc.get("name", PRIMARY))
        run.streams[doc["uid"]] = stream
        # Data kept outside the events (a detector's frames in its own file) stay in
        # their own stream, where the StreamDatum documents point: a bundled point
        # carries no stand-in for them (ADR 0212).
        inline = internal_keys(doc["data_keys"])
        # Several descriptors of one stream: the keys are merged.
        run.data_keys.setdefault(stream, {}).update(inline)
        run.object_keys.setdefault(stream, {}).update(doc.get("object_keys") or {})
        if run.kind(stream) == "async":
            if run.descriptor is not None and stream not in run.late_async:
                run.late_async.add(stream)
                logger.warning(
                    "run %s: async stream %r began after the first bundled point; it is not joined",
                    run.uid, stream,
                )  # fmt: skip
            for key in inline:
                run.async_keys.setdefault(key, _AsyncKey(stream))

    def _event(self, run: _RunBundle, event: Mapping[str, Any]) -> None:
        stream = run.streams[event["descriptor"]]
        kind = run.kind(stream)
        if kind == "async":
            latest = run.watermark.get(stream, -math.inf)
            for key, value in event["data"].items():
                stamp = float(event["timestamps"].get(key, event["time"]))
                run.async_keys.setdefault(key, _AsyncKey(stream)).add(stamp, value)
                latest = max(latest, stamp)
            run.watermark[stream] = latest
            self._release(run)
            self._forget(run)
        elif kind == "monitored":
            point = event["data"].get(run.point_key, event["seq_num"])
            if point in run.emitted:
                logger.error("run %s: stream %r reported point %r again after it was bundled; "
                             "the late reading is not bundled", run.uid, stream, point)  # fmt: skip
                return
            readings = run.points.setdefault(point, {})
            if stream in readings:
                logger.error("run %s: stream %r reported point %r twice; the first reading is kept",
                             run.uid, stream, point)  # fmt: skip
                return
            run.latest_monitored = max(run.latest_monitored, float(event["time"]))
            readings[stream] = _Reading(float(event["time"]), dict(event["data"]), dict(event["timestamps"]))
            self._release(run)

    def _forget(self, run: _RunBundle) -> None:
        """Bound the async histories: a point to come is no older than the oldest point
        waiting, nor than ``async_wait`` before the latest monitored reading (documents in
        time order, or late by at most ``async_wait``), so older readings but the last
        one before that are never needed.  With ``async_wait=math.inf`` all are kept."""
        long = [history for history in run.async_keys.values() if len(history.times) > ASYNC_KEPT]
        if not long:
            return
        floor = run.latest_monitored - self.async_wait
        for readings in run.points.values():
            floor = min(floor, max(r.time for r in readings.values()))
        if math.isfinite(floor):
            for history in long:
                history.forget_before(floor)

    def _ready(self, run: _RunBundle, readings: Mapping[str, _Reading]) -> bool:
        if any(stream not in readings for stream in run.monitored):
            return False
        when = max(r.time for r in readings.values())
        if run.latest_monitored >= when + self.async_wait:
            return True
        return all(run.watermark.get(s, -math.inf) >= when for s in run.async_streams() - run.late_async)

    def _release(self, run: _RunBundle) -> None:
        ready = [p for p, readings in run.points.items() if self._ready(run, readings)]
        # Points that become ready together go out in their time order.
        ready.sort(key=lambda p: max(r.time for r in run.points[p].values()))
        for point in ready:
            self._bundle(run, point, complete=True)

    def _finish(self, run: _RunBundle) -> None:
        remaining = sorted(run.points, key=lambda p: max(r.time for r in run.points[p].values()))
        for point in remaining:
            readings = run.points[point]
            self._bundle(run, point, complete=all(s in readings for s in run.monitored))

    def _make_descriptor(self, run: _RunBundle) -> dict[str, Any]:
        data_keys: dict[str, Any] = {}
        object_keys: dict[str, list[str]] = {}
        hints: dict[str, Any] = {}
        for stream in run.monitored:
            for key, spec in run.data_keys.get(stream, {}).items():
                data_keys.setdefault(key, dict(spec))
            for obj, keys in run.object_keys.get(stream, {}).items():
                inline = [k for k in keys if k in data_keys and k not in object_keys.get(obj, [])]
                if inline:
                    object_keys.setdefault(obj, []).extend(inline)
        for key, history in run.async_keys.items():
            if history.stream in run.late_async or key in data_keys:
                continue
            spec = run.data_keys.get(history.stream, {}).get(key)
            if spec is not None:
                data_keys[key] = dict(spec)
                object_keys.setdefault(history.stream, []).append(key)
        data_keys[COMPLETE_KEY] = {
            "dtype": "boolean", "dtype_numpy": "|b1", "shape": [], "source": "orchestrion:bundler",
        }  # fmt: skip
        object_keys["bundle"] = [COMPLETE_KEY]
        run.descriptor = {
            "uid": str(uuid.uuid4()),
            "run_start": run.uid,
            "time": 0.0,
            "name": run.output,
            "data_keys": data_keys,
            "object_keys": object_keys,
            "configuration": {},
            "hints": hints,
        }
        return run.descriptor

    def _bundle(self, run: _RunBundle, point: Any, *, complete: bool) -> None:
        readings = run.points.pop(point)
        run.emitted.add(point)
        if run.descriptor is None:
            descriptor = self._make_descriptor(run)
            descriptor["time"] = min(r.time for r in readings.values())
            self._emit("descriptor", descriptor)
        assert run.descriptor is not None
        keys = run.descriptor["data_keys"]
        when = max(r.time for r in readings.values())
        data: dict[str, Any] = {}
        timestamps: dict[str, float] = {}
        for stream in run.monitored:
            reading = readings.get(stream)
            if reading is None:
                continue
            for key, value in reading.data.items():
                if key in keys and key not in data:
                    data[key] = value
                    timestamps[key] = reading.timestamps.get(key, reading.time)
        for key, history in run.async_keys.items():
            if key in keys and key not in data:
                found = history.at_or_before(when)
                if found is not None:
                    data[key], timestamps[key] = found
        for key, spec in keys.items():
            if key not in data:
                data[key] = fill_value(spec)
                timestamps[key] = 0.0
        data[COMPLETE_KEY] = complete
        timestamps[COMPLETE_KEY] = when
        if not complete:
            missing = [s for s in run.monitored if s not in readings]
            logger.warning("run %s: point %r bundled incomplete (no reading from %s)",
                           run.uid, point, ", ".join(missing))  # fmt: skip
        run.seq_num += 1
        self._emit("event", {
            "uid": str(uuid.uuid4()),
            "time": when,
            "descriptor": run.descriptor["uid"],
            "seq_num": run.seq_num,
            "data": data,
            "timestamps": timestamps,
            "filled": {},
        })  # fmt: skip


class Bundler(RunsRouter):
    """`RunBundler` for a stream of documents from any number of runs: a `RunRouter`.

    Every document of a run is passed on to ``downstream``.  A document that breaks the
    event model is logged with its run uid and dropped; the run goes on.
    """

    def __init__(
        self,
        downstream: DocumentCallback | Iterable[DocumentCallback] = (),
        *,
        monitored_streams: Iterable[str] = (PRIMARY,),
        point_key: str = POINT_KEY,
        output_stream: str = BUNDLED,
        async_wait: float = 0.0,
    ) -> None:
        super().__init__([self._factory], "bundler")
        self.downstream: list[DocumentCallback] = [downstream] if callable(downstream) else list(downstream)
        self._make = functools.partial(
            RunBundler, monitored_streams=tuple(monitored_streams), point_key=point_key,
            output_stream=output_stream, async_wait=async_wait,
        )  # fmt: skip

    def _factory(self, name: str, start: dict[str, Any]) -> tuple[list[DocumentCallback], list[Any]]:
        bundler = _CheckedBundler(self._make(start, self._pass_on), str(start["uid"]))
        return [bundler], []

    def _pass_on(self, name: str, doc: dict[str, Any]) -> None:
        for callback in self.downstream:
            callback(name, doc)

    def close(self) -> None:
        """Close the downstream callbacks (files of runs that never stopped are marked)."""
        super().close()
        for callback in self.downstream:
            close = getattr(callback, "close", None)
            if callable(close):
                close()


class _CheckedBundler:
    """A run's bundler behind the event-model checks: a bad document is logged and dropped."""

    def __init__(self, bundler: RunBundler, run_uid: str) -> None:
        self.bundler = bundler
        self.checks = RunChecks(run_uid)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            self.checks.check(name, doc)
        except DocumentError as exc:
            logger.error("bundler: %s; the document is not bundled", exc)
            return
        self.bundler(name, doc)
