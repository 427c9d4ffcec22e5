"""The bundler: one record per scan point, whatever order the streams arrive in."""

from __future__ import annotations

import gc
import logging
import math
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import event_model
import pytest
from event_model import DocumentNames, compose_run, pack_event_page, schema_validators, unpack_event_page
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrion.pipeline import BUNDLED, COMPLETE_KEY, Bundler, DocumentError, RunBundler, RunChecks
from orchestrion.pipeline._checks import RECENT_UIDS, SeenNumbers

NUMBER = {"dtype": "number", "shape": [], "source": "sim://x"}
INTEGER = {"dtype": "integer", "shape": [], "source": "sim://index"}
ARRAY = {"dtype": "array", "shape": [3], "dtype_numpy": "<i8", "source": "sim://counts"}
MONITORED = {
    "primary": {"point-index": INTEGER, "det-value": NUMBER, "det-counts": ARRAY},
    "aux": {"point-index": INTEGER, "aux-value": NUMBER},
}
ASYNC = {"field-field_monitor": {"field-field": NUMBER}, "temp-temp_monitor": {"temp-temp": NUMBER}}


@dataclass
class Scenario:
    """A run's streams, each in its own order, before they are interleaved."""

    start: dict[str, Any]
    descriptors: dict[str, dict[str, Any]]
    streams: dict[str, list[dict[str, Any]]]
    stop: dict[str, Any]
    monitored: list[str]
    asyncs: list[str]
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def make_scenario(
    points: int, monitored: Sequence[str], asyncs: Sequence[str], missing: set[tuple[str, int]],
    async_times: dict[str, list[float]], exit_status: str = "success",
) -> Scenario:  # fmt: skip
    run = compose_run(metadata={"experiment": "test", "bundle": {"monitored": list(monitored), "async": list(asyncs)}})
    descriptors = {
        name: run.compose_descriptor(name=name, data_keys=MONITORED[name] if name in MONITORED else ASYNC[name])
        for name in [*monitored, *asyncs]
    }
    streams: dict[str, list[dict[str, Any]]] = {name: [] for name in descriptors}
    for index in range(points):
        for offset, name in enumerate(monitored):
            if (name, index) in missing:
                continue
            when = 100.0 + index + 0.1 * offset
            data: dict[str, Any] = {"point-index": index}
            for key, spec in MONITORED[name].items():
                if key != "point-index":
                    data[key] = [index, 2 * index, 3 * index] if spec is ARRAY else index + 0.5 + offset
            streams[name].append(
                descriptors[name].compose_event(data=data, timestamps=dict.fromkeys(data, when), time=when)
            )
    for name in asyncs:
        (key,) = ASYNC[name]
        for stamp in sorted(async_times.get(name, [])):
            streams[name].append(
                descriptors[name].compose_event(data={key: stamp * 10}, timestamps={key: stamp}, time=stamp + 0.01)
            )
    stop = run.compose_stop(exit_status=exit_status)
    documents = {k: v.descriptor_doc for k, v in descriptors.items()}
    return Scenario(run.start_doc, documents, streams, stop, list(monitored), list(asyncs))  # type: ignore[arg-type]


def reference_join(scenario: Scenario) -> dict[int, dict[str, Any]]:
    """What the bundled stream must hold, point by point, computed from all data at once."""
    by_point: dict[int, dict[str, dict[str, Any]]] = {}
    for name in scenario.monitored:
        for event in scenario.streams[name]:
            by_point.setdefault(event["data"]["point-index"], {})[name] = event
    expected: dict[int, dict[str, Any]] = {}
    for point, events in by_point.items():
        when = max(e["time"] for e in events.values())
        row: dict[str, Any] = {}
        for name in scenario.monitored:
            if name in events:
                for key, value in events[name]["data"].items():
                    row.setdefault(key, value)
        for name in scenario.asyncs:
            (key,) = ASYNC[name]
            before = [e for e in scenario.streams[name] if e["timestamps"][key] <= when]
            row[key] = before[-1]["data"][key] if before else math.nan
        for name in scenario.monitored:
            for key, spec in MONITORED[name].items():
                row.setdefault(key, event_model_fill(spec))
        row[COMPLETE_KEY] = all(name in events for name in scenario.monitored)
        expected[point] = row
    return expected


def event_model_fill(spec: dict[str, Any]) -> Any:
    return [0, 0, 0] if spec is ARRAY else math.nan


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def collect(bundler_kwargs: dict[str, Any] | None = None) -> tuple[Bundler, list[tuple[str, dict[str, Any]]]]:
    out: list[tuple[str, dict[str, Any]]] = []

    def keep(name: str, doc: dict[str, Any]) -> None:
        # A RunRouter routes events as pages: each received event is passed on as a page of one.
        if name == "event_page":
            out.extend(("event", dict(event)) for event in unpack_event_page(doc))  # type: ignore[arg-type]
        else:
            out.append((name, doc))

    bundler = Bundler(keep, **(bundler_kwargs or {}))
    return bundler, out


def bundled(out: list[tuple[str, dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    descriptors = [d for n, d in out if n == "descriptor" and d["name"] == BUNDLED]
    uids = {d["uid"] for d in descriptors}
    return descriptors, [d for n, d in out if n == "event" and d["descriptor"] in uids]


@st.composite
def scenarios_and_orders(draw: st.DrawFn) -> tuple[Scenario, list[tuple[str, dict[str, Any]]]]:
    points = draw(st.integers(0, 7))
    monitored = draw(st.sampled_from([["primary"], ["primary", "aux"]]))
    asyncs = draw(st.sampled_from([[], ["field-field_monitor"], ["field-field_monitor", "temp-temp_monitor"]]))
    missing = draw(st.sets(st.tuples(st.sampled_from(monitored), st.integers(0, max(points - 1, 0)))))
    if len(monitored) == 1:
        missing = set()  # a point only one stream reports is never seen: nothing to flag
    stamp = st.floats(95.0, 110.0, allow_nan=False).map(lambda x: round(x, 3) + 0.0005)
    async_times = {name: draw(st.lists(stamp, max_size=6, unique=True)) for name in asyncs}
    exit_status = draw(st.sampled_from(["success", "fail", "abort"]))
    scenario = make_scenario(points, monitored, asyncs, missing, async_times, exit_status)
    # Interleave: each stream keeps its order and its descriptor comes first; across
    # streams anything goes.  Runs of one stream's events sometimes travel as a page.
    queues = {
        name: [("descriptor", scenario.descriptors[name])] + [("event", e) for e in events]
        for name, events in scenario.streams.items()
    }
    order: list[tuple[str, dict[str, Any]]] = [("start", scenario.start)]
    while any(queues.values()):
        name = draw(st.sampled_from(sorted(n for n, q in queues.items() if q)))
        queue = queues[name]
        if queue[0][0] == "event" and draw(st.booleans()):
            take = draw(st.integers(1, len(queue)))
            page = pack_event_page(*[doc for _, doc in queue[:take]])  # type: ignore[arg-type]
            del queue[:take]
            order.append(("event_page", page))
        else:
            order.append(queue.pop(0))
    order.append(("stop", scenario.stop))
    return scenario, order


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios_and_orders())
def test_any_interleaving_gives_the_reference_join(case: tuple[Scenario, list[tuple[str, dict[str, Any]]]]) -> None:
    scenario, order = case
    bundler, out = collect({"async_wait": math.inf})
    for name, doc in order:
        bundler(name, doc)
    descriptors, events = bundled(out)
    expected = reference_join(scenario)
    assert len(descriptors) == (1 if expected else 0)
    got = {e["data"]["point-index"]: e for e in events}
    assert len(got) == len(events), "a point was emitted twice"
    assert set(got) == set(expected), "a point was dropped or invented"
    for point, row in expected.items():
        data = got[point]["data"]
        assert set(data) == set(row)
        for key, value in row.items():
            assert same(data[key], value), (point, key, data[key], value)
    for descriptor in descriptors:
        schema_validators[DocumentNames.descriptor].validate(descriptor)
    for event in events:
        schema_validators[DocumentNames.event].validate(event)
        assert set(event["data"]) == set(descriptors[0]["data_keys"])
    # Every input document was passed on, and the stop (last) counts the bundled points.
    made = {d["uid"] for d in descriptors} | {e["uid"] for e in events}
    passed = [(n, d) for n, d in out if not (n in ("descriptor", "event") and d["uid"] in made)]
    order = [
        pair
        for name, doc in order
        for pair in (
            [("event", dict(e)) for e in unpack_event_page(doc)] if name == "event_page" else [(name, doc)]  # type: ignore[arg-type]
        )
    ]
    assert [n for n, _ in passed] == [n for n, _ in order]
    assert all(a == b for (_, a), (_, b) in zip(passed[:-1], order[:-1], strict=True))
    assert out[-1][0] == "stop"
    assert out[-1][1]["num_events"][BUNDLED] == len(events)


def test_points_go_out_as_soon_as_every_monitored_stream_reported() -> None:
    scenario = make_scenario(
        3, ["primary", "aux"], ["field-field_monitor"], set(), {"field-field_monitor": [99.0, 101.05]}
    )
    bundler, out = collect()
    docs = [("start", scenario.start)] + [("descriptor", d) for d in scenario.descriptors.values()]
    field_events = scenario.streams["field-field_monitor"]
    docs.append(("event", field_events[0]))
    for index in range(3):
        docs.append(("event", scenario.streams["primary"][index]))
        docs.append(("event", scenario.streams["aux"][index]))
        if index == 1:
            docs.append(("event", field_events[1]))
    for name, doc in docs:
        bundler(name, doc)
    _, events = bundled(out)
    # No stop yet: all three points are out, each right after its last monitored reading.
    assert [e["data"]["point-index"] for e in events] == [0, 1, 2]
    assert [e["data"]["field-field"] for e in events] == [990.0, 990.0, 1010.5]
    assert all(e["data"][COMPLETE_KEY] for e in events)
    flow = [(n, d) for n, d in out if not (n == "descriptor" and d["name"] == BUNDLED)]
    positions = [i for i, (n, d) in enumerate(flow) if n == "event" and d in events]
    aux_positions = [i for i, (n, d) in enumerate(flow) if n == "event" and d in scenario.streams["aux"]]
    assert positions == [p + 1 for p in aux_positions]


def test_a_failed_run_flags_incomplete_points_at_its_stop() -> None:
    scenario = make_scenario(4, ["primary", "aux"], [], {("aux", 2), ("aux", 3)}, {}, exit_status="fail")
    bundler, out = collect()
    bundler("start", scenario.start)
    for name in ("primary", "aux"):
        bundler("descriptor", scenario.descriptors[name])
    for event in scenario.streams["primary"] + scenario.streams["aux"]:
        bundler("event", event)
    assert [e["data"]["point-index"] for e in bundled(out)[1]] == [0, 1]
    bundler("stop", scenario.stop)
    _, events = bundled(out)
    assert [(e["data"]["point-index"], e["data"][COMPLETE_KEY]) for e in events] == [
        (0, True),
        (1, True),
        (2, False),
        (3, False),
    ]
    assert math.isnan(events[3]["data"]["aux-value"])
    assert out[-1][1]["exit_status"] == "fail"


def test_streams_without_a_point_key_pair_by_sequence_number() -> None:
    run = compose_run()
    primary = run.compose_descriptor(name="primary", data_keys={"det": NUMBER})
    bundler, out = collect()
    bundler("start", run.start_doc)
    bundler("descriptor", primary.descriptor_doc)
    for n in range(3):
        bundler("event", primary.compose_event(data={"det": float(n)}, timestamps={"det": 1.0 + n}, time=1.0 + n))
    bundler("stop", run.compose_stop())
    assert [e["data"]["det"] for e in bundled(out)[1]] == [0.0, 1.0, 2.0]


def test_bad_documents_are_logged_with_their_run_and_other_runs_go_on(caplog: pytest.LogCaptureFixture) -> None:
    good, bad = make_scenario(2, ["primary"], [], set(), {}), make_scenario(2, ["primary"], [], set(), {})
    bundler, out = collect()
    caplog.set_level(logging.ERROR)
    # An event before its run's start.
    bundler("descriptor", bad.descriptors["primary"])
    assert f"run {bad.start['uid']}" in caplog.text
    assert "before the run's start" in caplog.text
    bundler("start", good.start)
    bundler("descriptor", good.descriptors["primary"])
    bundler("event", good.streams["primary"][0])
    # The same event again, then an event of a descriptor nobody announced.
    caplog.clear()
    bundler("event", good.streams["primary"][0])
    assert f"run {good.start['uid']}: event uid {good.streams['primary'][0]['uid']} is used twice" in caplog.text
    stray = event_model.compose_run().compose_descriptor(name="primary", data_keys={"det": NUMBER})
    bundler("event", stray.compose_event(data={"det": 1.0}, timestamps={"det": 1.0}))
    assert "unknown descriptor" in caplog.text
    bundler("event", good.streams["primary"][1])
    bundler("stop", good.stop)
    _, events = bundled(out)
    assert [e["data"]["point-index"] for e in events] == [0, 1]


def test_a_stream_with_several_descriptors_is_one_stream() -> None:
    run = compose_run()
    keys = {"point-index": INTEGER, "det-value": NUMBER}
    first = run.compose_descriptor(name="primary", data_keys=keys)
    second = run.compose_descriptor(
        name="primary",
        data_keys=keys,
        configuration={"det": {"data": {"gain": 2}, "timestamps": {"gain": 0.0}, "data_keys": {"gain": NUMBER}}},
    )
    bundler, out = collect()
    bundler("start", run.start_doc)
    bundler("descriptor", first.descriptor_doc)
    bundler(
        "event",
        first.compose_event(
            data={"point-index": 0, "det-value": 1.0}, timestamps={"point-index": 1.0, "det-value": 1.0}, time=1.0
        ),
    )
    bundler("descriptor", second.descriptor_doc)
    bundler(
        "event",
        second.compose_event(
            data={"point-index": 1, "det-value": 2.0}, timestamps={"point-index": 2.0, "det-value": 2.0}, time=2.0
        ),
    )
    bundler("stop", run.compose_stop())
    descriptors, events = bundled(out)
    assert len(descriptors) == 1
    assert [(e["data"]["point-index"], e["data"]["det-value"]) for e in events] == [(0, 1.0), (1, 2.0)]


# -- memory bounded over a run: the guarantees (each point once, a repeat refused) kept


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-20, 60), max_size=120))
def test_seen_numbers_answer_as_a_set_would_whatever_the_order(numbers: list[int]) -> None:
    seen, reference = SeenNumbers(), set()
    for number in numbers:
        assert seen.add(number) == (number not in reference)
        reference.add(number)
        assert all((n in seen) == (n in reference) for n in range(-22, 63))
    # What a stop's count is held against: the numbers of a range never seen.
    for first, last in ((-22, 62), (1, 40), (5, 4), (30, 30)):
        unseen = [n for first_, last_ in seen.missing(first, last) for n in range(first_, last_ + 1)]
        assert unseen == [n for n in range(first, last + 1) if n not in reference]
    assert seen.highest == (max(reference) if reference else None)


def test_numbers_in_order_leave_no_gap() -> None:
    seen = SeenNumbers()
    for number in range(1, 100_001):
        seen.add(number)
    assert seen.gaps == 0
    assert 1 in seen
    assert 100_000 in seen
    assert 0 not in seen
    assert 100_001 not in seen


def plain_events(descriptor: str, first: int, last: int, key: str = "point-index") -> Iterator[dict[str, Any]]:
    """Events built by hand (no validation: the long runs below would spend their time in it)."""
    for n in range(first, last):
        when = 1000.0 + n
        yield {"uid": str(uuid.uuid4()), "descriptor": descriptor, "seq_num": n + 1, "time": when,
               "data": {key: n, "det-value": float(n)}, "timestamps": {key: when, "det-value": when},
               "filled": {}}  # fmt: skip


def growth_per_point(feed: Callable[[int, int], None], warm: int, points: int) -> float:
    """Bytes per point that stay allocated while a run goes from ``warm + points`` to
    ``warm + 2 * points`` points: what the run's state grows by (bounded windows, full
    by then, only replace their contents)."""
    feed(0, warm)
    tracemalloc.start()  # before the first window is replaced: its contents are traced too
    try:
        feed(warm, warm + points)
        gc.collect()
        before = tracemalloc.take_snapshot()
        feed(warm + points, warm + 2 * points)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / points


def test_the_checks_of_a_long_run_stay_small_and_still_refuse_an_event_sent_again() -> None:
    run = compose_run()
    primary = run.compose_descriptor(name="primary", data_keys={"point-index": INTEGER, "det-value": NUMBER})
    checks = RunChecks(run.start_doc["uid"])
    checks.check("start", run.start_doc)
    checks.check("descriptor", primary.descriptor_doc)
    sent: list[dict[str, Any]] = []

    def feed(first: int, last: int) -> None:
        for event in plain_events(primary.descriptor_doc["uid"], first, last):
            checks.check("event", event)
            if len(sent) < 3:
                sent.append(event)

    # The state is the last uids' window and a few numbers: it does not grow with the run
    # (it grew by about 200 bytes per point when every uid was kept).
    assert growth_per_point(feed, RECENT_UIDS, 15_000) < 8
    # An event sent again long after the uid window forgot it: its seq_num gives it away.
    with pytest.raises(DocumentError, match="used twice"):
        checks.check("event", sent[1])
    # A page whose events came before, too.
    page = pack_event_page(*plain_events(primary.descriptor_doc["uid"], 5, 7))  # type: ignore[arg-type]
    with pytest.raises(DocumentError, match="seq_num 6 of stream 'primary' is used twice"):
        checks.check("event_page", page)


def test_a_long_run_is_bundled_in_bounded_memory_each_point_once() -> None:
    emitted: list[tuple[str, dict[str, Any]]] = []
    run = compose_run()
    primary = run.compose_descriptor(name="primary", data_keys={"point-index": INTEGER, "det-value": NUMBER})
    field_monitor = run.compose_descriptor(name="field-field_monitor", data_keys={"field-field": NUMBER})
    field_uid = field_monitor.descriptor_doc["uid"]
    raw = {primary.descriptor_doc["uid"], field_uid}

    def keep_bundled(name: str, doc: dict[str, Any]) -> None:
        if name == "event" and doc["descriptor"] not in raw:
            emitted.append((name, doc))

    bundler = RunBundler(run.start_doc, keep_bundled)
    bundler("descriptor", dict(primary.descriptor_doc))
    bundler("descriptor", dict(field_monitor.descriptor_doc))
    counted = 0

    def feed(first: int, last: int) -> None:
        nonlocal counted
        for event in plain_events(primary.descriptor_doc["uid"], first, last):
            # An async reading on its own clock before each point: its history is bounded too.
            when = event["time"] - 0.5
            bundler("event", {"uid": str(uuid.uuid4()), "descriptor": field_uid, "seq_num": event["seq_num"],
                              "time": when, "data": {"field-field": when}, "timestamps": {"field-field": when},
                              "filled": {}})  # fmt: skip
            bundler("event", event)
        counted += len(emitted)
        emitted.clear()  # what goes downstream is not the bundler's to keep

    assert growth_per_point(feed, 1000, 15_000) < 8
    assert counted == 31_000 == bundler.bundled_points
    # A point reported again after it was bundled is not bundled twice.
    bundler("event", next(plain_events(primary.descriptor_doc["uid"], 10, 11)))
    assert emitted == []
    assert bundler.bundled_points == 31_000
    # Each point's async value is still the last one at or before it.
    bundler("event", {"uid": str(uuid.uuid4()), "descriptor": field_uid, "seq_num": 40_000, "time": 40_999.0,
                      "data": {"field-field": 7.0}, "timestamps": {"field-field": 40_999.0}, "filled": {}})  # fmt: skip
    bundler("event", next(plain_events(primary.descriptor_doc["uid"], 40_000, 40_001)))
    ((_, last),) = emitted
    assert last["data"]["field-field"] == 7.0
    assert last["data"]["point-index"] == 40_000
