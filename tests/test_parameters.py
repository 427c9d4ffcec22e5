"""The parameter store: one suite, run against SQLite and against a real influxd."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd_async.core import init_devices
from pydantic import SecretStr

from orchestrion.config import load_config
from orchestrion.errors import ParameterError
from orchestrion.parameters import (
    BaseParameterStore,
    InfluxParameterStore,
    ParameterSpec,
    ParameterStoreError,
    ParameterStoreUnavailable,
    ParameterType,
    ParameterValue,
    SQLiteParameterStore,
    line_protocol,
    open_parameter_store,
    parameter_signal,
)
from tests import influx
from tests.influx import InfluxServer, running_influxd
from tests.support import free_port

influxd = influx.influxd  # the session's influxd (a fixture)

FREQUENCY = ParameterSpec(
    id="qubit.frequency", type=ParameterType.FLOAT, default=12.6428e9, unit="Hz", minimum=1e9, maximum=20e9,
    group="Qubit",
)  # fmt: skip
PI_TIME = ParameterSpec(id="qubit.pi_time", type=ParameterType.FLOAT, default=10e-6, unit="s", minimum=0)
THRESHOLD = ParameterSpec(id="detection.threshold", type=ParameterType.INT, default=5, minimum=0, maximum=1000)
ENABLED = ParameterSpec(id="cooling.enabled", type=ParameterType.BOOL, default=True)
NOTE = ParameterSpec(id="lab.note", type=ParameterType.STR, default="hello", group="Lab book")
MODE = ParameterSpec(id="detection.mode", type=ParameterType.ENUM, default="fast", allowed=("fast", "slow"))
SPECS = [FREQUENCY, PI_TIME, THRESHOLD, ENABLED, NOTE, MODE]


@dataclass
class Backend:
    """One backing store, opened as many times (and from as many processes) as a test likes."""

    name: str
    env: dict[str, str]
    sqlite_path: Path | None = None
    influx: InfluxServer | None = None
    database: str = ""
    opened: list[BaseParameterStore] = field(default_factory=list)

    def open(self, specs: list[ParameterSpec] | None = SPECS) -> BaseParameterStore:
        store: BaseParameterStore
        if self.sqlite_path is not None:
            store = SQLiteParameterStore(self.sqlite_path)
        else:
            assert self.influx is not None
            store = InfluxParameterStore(self.influx.url, self.database)
        self.opened.append(store)
        if specs:
            store.declare(specs)
        return store

    def write_elsewhere(self, value: ParameterValue, spec: ParameterSpec) -> None:
        """Write as a program that is not Orchestrion would: raw SQL, raw line protocol."""
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as db:
                micros = (value.timestamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
                db.execute(
                    "INSERT INTO parameter_value (id, time_us, kind, value, source) VALUES (?, ?, ?, ?, ?)",
                    (value.id, micros, type(value.value).__name__, value.value, value.source),
                )
        else:
            assert self.influx is not None
            self.influx.write_lines(self.database, line_protocol(value, spec))

    @contextmanager
    def count_queries(self, store: BaseParameterStore) -> Iterator[list[str]]:
        """Every statement the store sends to its backend while the block runs."""
        seen: list[str] = []
        if isinstance(store, SQLiteParameterStore):
            # `PRAGMA data_version` (the cache check) reads no table: only queries count.
            store._db.set_trace_callback(lambda sql: None if sql.startswith("PRAGMA") else seen.append(sql))
            try:
                yield seen
            finally:
                store._db.set_trace_callback(None)
        else:
            assert isinstance(store, InfluxParameterStore)
            hooks = store._http.event_hooks
            hooks["request"].append(lambda request: seen.append(str(request.url)))
            store._http.event_hooks = hooks
            try:
                yield seen
            finally:
                store._http.event_hooks = {"request": [], "response": []}


@pytest.fixture(params=["sqlite", "influx"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "parameters.db"
        made = Backend("sqlite", {"ORCHESTRION_HOME": str(tmp_path)}, sqlite_path=path)
    else:
        server: InfluxServer = request.getfixturevalue("influxd")
        database = f"test_{uuid.uuid4().hex[:12]}"
        env = {"ORCHESTRION_HOME": str(tmp_path), "ORCHESTRION_INFLUX_URL": server.url}
        env["ORCHESTRION_INFLUX_DATABASE"] = database
        made = Backend("influx", env, influx=server, database=database)
    yield made
    for store in made.opened:
        store.close()


def _utc_now() -> datetime:
    return datetime.now(UTC)


# -- declaration ----------------------------------------------------------------------


def test_declare_creates_defaults_once_and_never_overwrites(backend: Backend) -> None:
    first = backend.open(specs=None)
    assert first.declare(SPECS) == [s.id for s in SPECS]
    assert {pid: v.value for pid, v in first.snapshot([s.id for s in SPECS]).items()} == {
        s.id: s.default for s in SPECS
    }
    assert all(v.source == "default" for v in first.snapshot(["qubit", "detection"]).values())
    first.set("qubit.frequency", 12.5e9, source="calibration")

    second = backend.open(specs=None)
    assert second.declare(SPECS) == []
    assert second.get("qubit.frequency").value == 12.5e9
    assert [v.value for v in second.history("qubit.frequency")] == [12.6428e9, 12.5e9]


def test_declaring_a_parameter_differently_is_refused(backend: Backend) -> None:
    store = backend.open()
    changed = FREQUENCY.model_copy(update={"maximum": 30e9})
    with pytest.raises(ParameterError, match="declared twice"):
        store.declare([changed])


# -- values and validation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (FREQUENCY, 12.642812345678912e9),
        (FREQUENCY, 1e9),
        (PI_TIME, 1.2345e-7),
        (THRESHOLD, 0),
        (THRESHOLD, 1000),
        (ENABLED, False),
        (NOTE, 'commas, spaces = "quotes" \\ backslash, ünïcode'),
        (NOTE, ""),
        (MODE, "slow"),
    ],
)
def test_values_round_trip_with_their_type(backend: Backend, spec: ParameterSpec, value: Any) -> None:
    store = backend.open()
    written = store.set(spec.id, value, source="test")
    fresh = backend.open()  # nothing cached: read back from the backend
    read = fresh.get(spec.id)
    assert read == written
    assert type(read.value) is type(value)


def test_int_parameters_take_whole_floats_and_64_bit_range(backend: Backend) -> None:
    spec = ParameterSpec(id="counter.total", type=ParameterType.INT, default=0)
    store = backend.open([spec])
    assert store.set("counter.total", 3.0, source="test").value == 3
    store.set("counter.total", 2**63 - 1, source="test")
    assert backend.open([spec]).get("counter.total").value == 2**63 - 1
    with pytest.raises(ParameterError, match="64-bit"):
        store.set("counter.total", 2**63, source="test")


@pytest.mark.parametrize(
    ("parameter_id", "value", "message"),
    [
        ("qubit.frequency", "fast", "not of type float"),
        ("qubit.frequency", 30e9, "above the maximum"),
        ("qubit.frequency", float("nan"), "not a finite number"),
        ("qubit.pi_time", -1e-6, "below the minimum"),
        ("detection.threshold", 2.5, "not of type int"),
        ("detection.threshold", True, "not of type int"),
        ("cooling.enabled", 1, "not of type bool"),
        ("detection.mode", "medium", "not one of"),
        ("lab.note", 5, "not of type str"),
        ("qubit.nothing", 1.0, "unknown parameter 'qubit.nothing'"),
    ],
)
def test_bad_values_are_refused_and_nothing_is_written(
    backend: Backend, parameter_id: str, value: Any, message: str
) -> None:
    store = backend.open()
    before = {s.id: store.history(s.id) for s in SPECS}
    with pytest.raises(ParameterError, match=message):
        store.set(parameter_id, value, source="test")
    reopened = backend.open()
    assert {s.id: reopened.history(s.id) for s in SPECS} == before


# -- history and "as of" reads --------------------------------------------------------


def test_history_and_reads_as_of_a_time(backend: Backend) -> None:
    store = backend.open()
    default = store.get("qubit.frequency")
    steps = [store.set("qubit.frequency", 12.6e9 + i * 1e3, source=f"step{i}") for i in range(4)]
    everything = store.history("qubit.frequency")
    assert everything == [default, *steps]
    assert [v.timestamp for v in everything] == sorted({v.timestamp for v in everything})

    # At a value's own timestamp that value counts; a microsecond before, the previous one.
    assert store.get("qubit.frequency", at=steps[2].timestamp) == steps[2]
    assert store.get("qubit.frequency", at=steps[2].timestamp - timedelta(microseconds=1)) == steps[1]
    assert store.get("qubit.frequency", at=_utc_now() + timedelta(days=1)) == steps[-1]
    with pytest.raises(ParameterError, match="has no value at"):
        store.get("qubit.frequency", at=default.timestamp - timedelta(seconds=1))
    # Naive times are UTC.
    naive = steps[1].timestamp.replace(tzinfo=None)
    assert store.get("qubit.frequency", at=naive) == steps[1]

    assert store.history("qubit.frequency", since=steps[1].timestamp, until=steps[2].timestamp) == steps[1:3]
    assert store.history("qubit.frequency", since=steps[3].timestamp) == steps[3:]
    assert store.history("qubit.frequency", until=default.timestamp) == [default]
    with pytest.raises(ParameterError, match="is after until"):
        store.history("qubit.frequency", since=steps[3].timestamp, until=steps[0].timestamp)


def test_snapshot_as_of_a_time_mixes_namespaces_and_ids(backend: Backend) -> None:
    store = backend.open()
    store.set("qubit.frequency", 12.0e9, source="a")
    store.set("detection.threshold", 7, source="a")
    middle = store.get("detection.threshold").timestamp
    store.set("qubit.frequency", 13.0e9, source="b")
    store.set("detection.threshold", 9, source="b")

    then = store.snapshot(["qubit", "detection.threshold"], at=middle)
    assert list(then) == ["qubit.frequency", "qubit.pi_time", "detection.threshold"]
    assert then["qubit.frequency"].value == 12.0e9
    assert then["detection.threshold"].value == 7
    now = store.snapshot(["qubit", "detection.threshold"])
    assert (now["qubit.frequency"].value, now["detection.threshold"].value) == (13.0e9, 9)
    with pytest.raises(ParameterError, match=r"unknown parameter 'nothing'"):
        store.snapshot(["qubit", "nothing"])


def test_a_snapshot_of_many_parameters_is_one_query(backend: Backend) -> None:
    many = [ParameterSpec(id=f"bulk.p{i:03d}", type=ParameterType.FLOAT, default=float(i)) for i in range(300)]
    backend.open(many)
    store = backend.open(many)  # a new object: nothing cached yet
    with backend.count_queries(store) as cold:
        values = store.snapshot(["bulk"])
    assert len(values) == 300
    assert [v.value for v in values.values()] == [float(i) for i in range(300)]
    assert len(cold) == 1, cold
    with backend.count_queries(store) as as_of:
        store.snapshot(["bulk"], at=_utc_now())
    assert len(as_of) == 1, as_of


# -- values written elsewhere ---------------------------------------------------------


def test_a_value_written_elsewhere_is_seen_through_the_cache(backend: Backend) -> None:
    store = backend.open()
    assert store.get("qubit.frequency").value == FREQUENCY.default  # now cached
    outside = ParameterValue(id="qubit.frequency", value=12.7e9, timestamp=_utc_now(), source="influx-cli")
    backend.write_elsewhere(outside, FREQUENCY)
    assert store.get("qubit.frequency") == outside
    assert store.snapshot(["qubit"])["qubit.frequency"] == outside
    assert store.history("qubit.frequency")[-1] == outside


def test_a_cached_snapshot_sees_values_written_elsewhere(backend: Backend) -> None:
    many = [ParameterSpec(id=f"bulk.p{i:03d}", type=ParameterType.INT, default=i) for i in range(60)]
    store = backend.open(many)
    other = backend.open(many)
    assert store.snapshot(["bulk"])["bulk.p007"].value == 7  # the cache now holds all 60
    with backend.count_queries(store) as cached:
        assert store.snapshot(["bulk"])["bulk.p007"].value == 7
    assert len(cached) <= 1, cached

    written = other.set("bulk.p007", 70, source="other process")
    assert store.snapshot(["bulk"])["bulk.p007"] == written
    outside = ParameterValue(id="bulk.p059", value=590, timestamp=_utc_now(), source="raw")
    backend.write_elsewhere(outside, many[59])
    seen = store.snapshot(["bulk"])
    assert (seen["bulk.p007"], seen["bulk.p059"]) == (written, outside)
    assert [v.value for pid, v in seen.items() if pid not in ("bulk.p007", "bulk.p059")] == [
        i for i in range(60) if i not in (7, 59)
    ]


def test_invalidate_rereads_even_a_backdated_edit(backend: Backend) -> None:
    spec = ParameterSpec(id="old.value", type=ParameterType.INT, default=0)
    store = backend.open(specs=None)
    store._specs[spec.id] = spec  # declared without a default: the history below is all
    long_ago = _utc_now() - timedelta(hours=3)
    backend.write_elsewhere(ParameterValue(id=spec.id, value=1, timestamp=long_ago, source="x"), spec)
    assert store.get(spec.id).value == 1
    edit = ParameterValue(id=spec.id, value=2, timestamp=long_ago + timedelta(hours=1), source="edit")
    backend.write_elsewhere(edit, spec)
    store.invalidate([spec.id])
    assert store.get(spec.id) == edit


_WRITER = """
import sys
from orchestrion.config import load_config
from orchestrion.parameters import ParameterSpec, open_parameter_store

store = open_parameter_store(load_config())
store.declare([ParameterSpec.model_validate_json(sys.argv[1])])
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    store.set("qubit.frequency", 13e9 + i, source="process-2")
store.close()
print("done", flush=True)
"""


def test_a_concurrent_writer_in_another_process(backend: Backend) -> None:
    count = 40
    store = backend.open()
    store.get("qubit.frequency")  # cached before the other process writes
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, FREQUENCY.model_dump_json(), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**_clean_env(), **backend.env},
    )  # fmt: skip
    try:
        assert writer.stdout is not None
        assert writer.stdin is not None
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read() if writer.stderr else ""
        writer.stdin.write("go\n")
        writer.stdin.flush()
        for i in range(count):  # both processes write at once
            store.set("qubit.frequency", 12e9 + i, source="process-1")
        stdout, stderr = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, stderr
    assert "done" in stdout

    history = store.history("qubit.frequency")
    sources = [v.source for v in history]
    assert sources.count("process-1") == count
    assert sources.count("process-2") == count
    assert sources.count("default") == 1  # the second declaration found the value
    # Two processes may set it in the same microsecond: then either value is the latest.
    newest = max(v.timestamp for v in history)
    latest = [v for v in history if v.timestamp == newest]
    assert store.get("qubit.frequency") in latest
    assert backend.open().get("qubit.frequency") in latest


_SAME_MOMENT_WRITER = """
import sys
from datetime import datetime
from orchestrion.config import load_config
from orchestrion.parameters import ParameterSpec, _store, open_parameter_store

moment = datetime.fromisoformat(sys.argv[2])
_store.now_utc = lambda: moment  # this process's clock reads the same microsecond as the test's
store = open_parameter_store(load_config())
store.declare([ParameterSpec.model_validate_json(sys.argv[1])])
store.set("qubit.frequency", 13e9, source="process-2")
store.close()
"""


def test_two_processes_setting_a_parameter_in_the_same_microsecond_both_keep_their_value(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.open()
    moment = _utc_now().replace(microsecond=123456)
    monkeypatch.setattr("orchestrion.parameters._store.now_utc", lambda: moment)
    store.set("qubit.frequency", 12e9, source="process-1")
    subprocess.run(
        [sys.executable, "-c", _SAME_MOMENT_WRITER, FREQUENCY.model_dump_json(), moment.isoformat()],
        env={**_clean_env(), **backend.env}, check=True, timeout=60,
    )  # fmt: skip
    at_that_moment = store.history("qubit.frequency", since=moment, until=moment)
    assert sorted((v.source, v.value) for v in at_that_moment) == [("process-1", 12e9), ("process-2", 13e9)]


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRION_")}


# -- parameters as signals ------------------------------------------------------------


def test_parameters_as_signals_in_a_plan_and_a_baseline(backend: Backend, RE: RunEngine) -> None:
    store = backend.open()
    with init_devices():  # connects in the RunEngine's loop
        frequency = parameter_signal(store, "qubit.frequency")
        threshold = parameter_signal(store, "detection.threshold", source="plan:test")

    docs: dict[str, list[dict[str, Any]]] = {}
    RE.subscribe(lambda name, doc: docs.setdefault(name, []).append(doc))

    read_back: list[Any] = []

    @bpp.run_decorator()
    def plan() -> Any:
        yield from bps.mv(frequency, 12.61e9, threshold, 11)
        read_back.append((yield from bps.rd(frequency)))

    RE(bpp.baseline_wrapper(plan(), [frequency, threshold]))
    assert read_back == [12.61e9]
    assert store.get("detection.threshold").value == 11
    assert store.get("detection.threshold").source == "plan:test"
    assert store.get("qubit.frequency").source == "plan"

    baseline_desc = next(d for d in docs["descriptor"] if d["name"] == "baseline")
    key = baseline_desc["data_keys"]["qubit-frequency"]
    assert key["source"] == "parameter://qubit.frequency"
    assert key["units"] == "Hz"
    assert key["dtype"] == "number"
    first, last = docs["event"][0], docs["event"][-1]
    assert first["data"]["qubit-frequency"] == FREQUENCY.default
    assert last["data"]["qubit-frequency"] == 12.61e9
    # A reading's time is when the value was set, so the baseline traces the stored value.
    assert last["timestamps"]["detection-threshold"] == store.get("detection.threshold").timestamp.timestamp()

    before = store.history("qubit.frequency")
    with pytest.raises(FailedStatus) as failed:
        RE(bps.mv(frequency, 99e9))
    assert isinstance(failed.value.__cause__, ParameterError)
    assert "above the maximum" in str(failed.value.__cause__)
    assert store.history("qubit.frequency") == before


def test_a_signal_for_an_undeclared_parameter_is_refused(backend: Backend) -> None:
    with pytest.raises(ParameterError, match=r"unknown parameter 'qubit\.nothing'"):
        parameter_signal(backend.open(), "qubit.nothing")


# -- choosing and reaching the backend ------------------------------------------------


def test_the_default_store_is_sqlite_under_home(home: Path) -> None:
    store = open_parameter_store(load_config())
    try:
        assert isinstance(store, SQLiteParameterStore)
        assert store.path == home.resolve() / "parameters.db"
        store.declare([FREQUENCY])
        assert store.path.is_file()
    finally:
        store.close()


def test_the_influx_url_selects_influxdb(home: Path, influxd: InfluxServer) -> None:
    store = open_parameter_store(load_config(influx_url=influxd.url, influx_database="selected"))
    try:
        assert isinstance(store, InfluxParameterStore)
        store.declare([FREQUENCY])
        names = influxd.query("SHOW DATABASES")["results"][0]["series"][0]["values"]
        assert ["selected"] in names
    finally:
        store.close()


def test_an_unreachable_influxdb_is_one_clear_error(home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ParameterStoreUnavailable, match=r"InfluxDB at http://127\.0\.0\.1:\d+ is unreachable"):
        open_parameter_store(load_config(influx_url=url, influx_timeout=2))


def test_credentials_are_used_and_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "pa55-never-shown"
    with running_influxd(tmp_path / "auth", auth=True, password=secret) as server:
        with pytest.raises(ParameterStoreUnavailable, match="refused the credentials") as refused:
            InfluxParameterStore(server.url, "lab", username="admin", password=SecretStr("wrong-" + secret))
        assert secret not in str(refused.value)
        store = InfluxParameterStore(server.url, "lab", username="admin", password=SecretStr(secret))
        store.declare([FREQUENCY])
        assert store.set("qubit.frequency", 12.1e9, source="t").value == 12.1e9
        assert secret not in repr(store)
    # The server is gone: reads fail with one clear error, cached or not.
    with pytest.raises(ParameterStoreUnavailable, match="unreachable"):
        store.get("qubit.frequency")
    with pytest.raises(ParameterStoreUnavailable, match="unreachable"):
        store.set("qubit.frequency", 12.2e9, source="t")
    store.close()
    assert secret not in caplog.text


def test_an_unusable_sqlite_path_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ParameterStoreError, match="parameter store"):
        SQLiteParameterStore(blocker / "parameters.db")


def test_a_foreign_file_is_not_taken_for_a_store(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 42")
    with pytest.raises(ParameterStoreError, match="unknown schema version 42"):
        SQLiteParameterStore(path)


def test_line_protocol_layout() -> None:
    value = ParameterValue(
        id="qubit.frequency", value=12.5e9, timestamp=datetime(2026, 1, 1, tzinfo=UTC), source='cli:ann "x"'
    )
    assert line_protocol(value, FREQUENCY) == (
        "parameter,group=Qubit,id=qubit.frequency,namespace=qubit,type=float "
        'value_float=12500000000.0,source="cli:ann \\"x\\"" 1767225600000000'
    )
    lab_book = ParameterValue(id="lab.note", value="a b", timestamp=datetime(2026, 1, 1, tzinfo=UTC), source="")
    assert line_protocol(lab_book, NOTE).startswith("parameter,group=Lab\\ book,id=lab.note,namespace=lab,type=str ")


def test_a_job_reads_its_own_parameters_as_of_a_time_and_shared_ones_now(backend: Backend) -> None:
    store = backend.open()
    store.set("detection.mode", "slow", source="job submitted")
    submitted = store.get("detection.mode").timestamp
    store.set("detection.mode", "fast", source="later edit")
    store.set("qubit.frequency", 12.9e9, source="calibration after submission")

    values = store.snapshot(["detection"], at=submitted, latest=["qubit"])
    assert list(values) == ["detection.threshold", "detection.mode", "qubit.frequency", "qubit.pi_time"]
    assert values["detection.mode"].value == "slow"
    assert values["qubit.frequency"].value == 12.9e9
    # An id named in both is read at its latest.
    assert store.snapshot(["detection.mode"], at=submitted, latest=["detection.mode"])["detection.mode"].value == "fast"


def test_the_change_mark_differs_after_any_write_and_only_then(backend: Backend) -> None:
    store = backend.open()
    other = backend.open()
    mark = store.change_mark()
    if backend.name == "influx":
        # No cheap way to know of a write with an older time: who holds a snapshot reads it again.
        assert mark is None
        return
    store.snapshot(["qubit", "detection"])
    assert store.change_mark() == mark  # reads change nothing
    store.set("qubit.frequency", 12.7e9, source="here")
    after_own = store.change_mark()
    assert after_own != mark
    other.set("qubit.pi_time", 11e-6, source="another process")
    after_other = store.change_mark()
    assert after_other != after_own
    # Even a row written in the past, by a program that is not Orchestrion.
    earlier = ParameterValue(
        id="detection.threshold", value=7, timestamp=datetime(2020, 1, 1, tzinfo=UTC), source="raw"
    )
    backend.write_elsewhere(earlier, THRESHOLD)
    assert store.change_mark() != after_other
