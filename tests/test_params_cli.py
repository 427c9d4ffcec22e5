"""`orchestrion params ...` end to end: real processes, a temporary home, SQLite and influxd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from orchestrion.parameters import ParameterSpec, ParameterType, ParameterValue, SQLiteParameterStore, line_protocol
from tests import influx
from tests.influx import InfluxServer
from tests.support import free_port

influxd = influx.influxd  # the session's influxd (a fixture)

ORCHESTRION = str(Path(sys.executable).with_name("orchestrion"))
# The library's declaration as far as these tests need it (the store decodes by type).
FREQUENCY = ParameterSpec(id="qubit.frequency", type=ParameterType.FLOAT, default=1e10, unit="Hz")


def orchestrion(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRION_")}
    clean |= {"ORCHESTRION_HOME": str(home), "ORCHESTRION_SIM_TIME_SCALE": "0.02", **env}
    return subprocess.run([ORCHESTRION, *args], capture_output=True, text=True, env=clean, timeout=120, check=False)


def ok(done: subprocess.CompletedProcess[str]) -> object:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stored_history(home: Path) -> list[ParameterValue]:
    """qubit.frequency as the SQLite store holds it, read without the CLI (nothing declared)."""
    path = home / "parameters.db"
    if not path.exists():
        return []
    store = SQLiteParameterStore(path)
    try:
        store._specs[FREQUENCY.id] = FREQUENCY
        return store.history(FREQUENCY.id)
    finally:
        store.close()


def test_list_get_set_history(tmp_path: Path) -> None:
    home = tmp_path / "home"
    listing = ok(orchestrion("params", "list", "--json", home=home))
    assert isinstance(listing, list)
    by_id = {item["id"]: item for item in listing}
    default = by_id["qubit.frequency"]["default"]
    assert by_id["qubit.frequency"]["value"] == default
    assert by_id["qubit.frequency"]["unit"] == "Hz"
    assert by_id["qubit.frequency"]["source"] == "default"
    assert by_id["qubit.frequency"]["type"] == "float"
    assert {"detection.threshold", "ramsey.wait"} <= set(by_id)
    qubit_only = ok(orchestrion("params", "list", "qubit", "--json", home=home))
    assert isinstance(qubit_only, list)
    assert {item["id"] for item in qubit_only} == {i for i in by_id if i.startswith("qubit.")}

    written = ok(orchestrion("params", "set", "qubit.frequency", "12.64e9", "--json", home=home))
    assert isinstance(written, dict)
    assert written["value"] == 12.64e9
    assert written["previous"]["value"] == default
    assert written["source"].startswith("cli:")

    got = ok(orchestrion("params", "get", "qubit.frequency", "--json", home=home))
    assert got == {k: written[k] for k in ("id", "value", "unit", "timestamp", "source")}

    created = datetime.fromisoformat(by_id["qubit.frequency"]["timestamp"])
    before = ok(orchestrion("params", "get", "qubit.frequency", "--at", created.isoformat(), "--json", home=home))
    assert isinstance(before, dict)
    assert before["value"] == default
    # A time with 'Z' and one without an offset (UTC) are both accepted.
    later = (datetime.fromisoformat(written["timestamp"]) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert ok(orchestrion("params", "get", "qubit.frequency", "--at", later + "Z", "--json", home=home)) == got
    assert ok(orchestrion("params", "get", "qubit.frequency", "--at", later, "--json", home=home)) == got

    history = ok(orchestrion("params", "history", "qubit.frequency", "--json", home=home))
    assert isinstance(history, list)
    assert [h["value"] for h in history] == [default, 12.64e9]
    recent = ok(
        orchestrion("params", "history", "qubit.frequency", "--since", written["timestamp"], "--json", home=home)
    )
    assert recent == history[1:]

    text = orchestrion("params", "get", "qubit.frequency", home=home)
    assert text.returncode == 0
    assert text.stdout.startswith("qubit.frequency = 12640000000.0 Hz")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "qubit.frequency", "fast"), "error: qubit.frequency: 'fast' is not a number"),
        (("set", "qubit.frequency", "1e12"), "error: qubit.frequency: 1000000000000.0 is above the maximum"),
        (("set", "detection.threshold", "2.5"), "error: detection.threshold: '2.5' is not an integer"),
        (("set", "qubit.nothing", "1"), "error: unknown parameter 'qubit.nothing'"),
        (("get", "qubit.nothing"), "error: unknown parameter 'qubit.nothing'"),
        (("get", "qubit.frequency", "--at", "yesterday"), "error: --at 'yesterday': not an ISO-8601 time"),
        (("get", "qubit.frequency", "--at", "2001-01-01T00:00:00Z"), "error: parameter 'qubit.frequency' has no value"),
        (("history", "qubit.frequency", "--until", "13:99"), "error: --until '13:99': not an ISO-8601 time"),
        (("list", "nothing"), "error: unknown parameter 'nothing'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    home = tmp_path / "home"
    ok(orchestrion("params", "set", "qubit.frequency", "12.6e9", "--json", home=home))
    before = stored_history(home)
    done = orchestrion("params", *args, home=home)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(message), done.stderr
    assert done.stderr.count("\n") == 1
    assert stored_history(home) == before


def test_a_refused_set_on_a_fresh_home_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = orchestrion("params", "set", "qubit.frequency", "fast", home=home)
    assert done.returncode == 2
    assert not (home / "parameters.db").exists()


def test_params_on_influxdb_see_raw_line_protocol_writes(tmp_path: Path, influxd: InfluxServer) -> None:
    home = tmp_path / "home"
    database = f"cli_{uuid.uuid4().hex[:10]}"
    env = {"ORCHESTRION_INFLUX_URL": influxd.url, "ORCHESTRION_INFLUX_DATABASE": database}
    written = ok(orchestrion("params", "set", "detection.threshold", "9", "--json", home=home, **env))
    assert isinstance(written, dict)
    assert written["value"] == 9
    assert not (home / "parameters.db").exists()

    # Another program writes straight to InfluxDB; the CLI reads it back.
    outside = ParameterValue(
        id="qubit.frequency",
        value=12.65e9,
        timestamp=datetime.fromisoformat(written["timestamp"]) + timedelta(milliseconds=1),
        source="telegraf",
    )
    influxd.write_lines(database, line_protocol(outside, FREQUENCY))
    got = ok(orchestrion("params", "get", "qubit.frequency", "--json", home=home, **env))
    assert isinstance(got, dict)
    assert (got["value"], got["source"]) == (12.65e9, "telegraf")
    history = ok(orchestrion("params", "history", "detection.threshold", "--json", home=home, **env))
    assert isinstance(history, list)
    assert [h["value"] for h in history] == [5, 9]


def test_an_unreachable_influxdb_stops_commands_and_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"ORCHESTRION_INFLUX_URL": f"http://127.0.0.1:{free_port()}", "ORCHESTRION_INFLUX_TIMEOUT": "2"}
    for args in (("params", "set", "qubit.frequency", "12.6e9"), ("params", "list"), ("run", "spectroscopy")):
        done = orchestrion(*args, home=home, **env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: InfluxDB at http://127.0.0.1:"), done.stderr
        assert "unreachable" in done.stderr
        assert done.stderr.count("\n") == 1
    # The run stopped before any hardware moved: no data, no local parameter store.
    assert not (home / "data").exists() or not any((home / "data").rglob("*.h5"))
    assert not (home / "parameters.db").exists()
