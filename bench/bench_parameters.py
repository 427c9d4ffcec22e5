"""Parameter store: snapshot of 1,000 parameters (cold and cached), single get and set.

Both backends, SQLite in a temporary file and a real influxd started for the run (as in
the tests). Each figure is the median of repeats. "bare" is the same read done without
the store (one SQL statement on a plain connection; one raw HTTP query), so the ratio
is what the store's validation, decoding and cache cost on top.

    python -m bench parameters
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench._report import Figure, collector
from orchestrion.parameters import (
    BaseParameterStore,
    InfluxParameterStore,
    ParameterSpec,
    ParameterType,
    SQLiteParameterStore,
)

COUNT = 1000
SPECS = [
    ParameterSpec(id=f"bench{i // 100}.p{i:04d}", type=ParameterType.FLOAT, default=float(i), unit="Hz")
    for i in range(COUNT)
]
IDS = [spec.id for spec in SPECS]


def median_ms(action: Callable[[], Any], repeats: int, before: Callable[[], Any] | None = None) -> list[float]:
    """Wall times of ``action`` in milliseconds, each repeat; ``before`` runs untimed each time."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return [t * 1e3 for t in times]


def measure(store: BaseParameterStore, bare_snapshot: Callable[[], Any]) -> dict[str, list[float]]:
    store.declare(SPECS)
    store.snapshot(IDS)
    # Some history, so reads have more than one row per id to skip.
    for round_ in range(3):
        for parameter_id in IDS[:100]:
            store.set(parameter_id, float(round_), source="bench")
    at = datetime.now(UTC)
    # InfluxDB's cache check returns what changed within the clock-skew allowance: let the
    # set-up writes age past it so the cached figures are those of a lab's quiet store.
    time.sleep(getattr(store, "clock_skew", 0.0) + 0.5)
    counter = iter(range(10**9))
    figures = {
        "snapshot 1000 bare": median_ms(bare_snapshot, 15),
        "snapshot 1000 cold": median_ms(lambda: store.snapshot(IDS), 15, before=store.invalidate),
        "snapshot 1000 cached": median_ms(lambda: store.snapshot(IDS), 50),
        "snapshot 1000 as of T": median_ms(lambda: store.snapshot(IDS, at=at), 15),
        "snapshot 10 cached": median_ms(lambda: store.snapshot(IDS[:10]), 100),
        "get cached": median_ms(lambda: store.get(IDS[500]), 300),
        "get cold": median_ms(lambda: store.get(IDS[500]), 100, before=store.invalidate),
        "get as of T": median_ms(lambda: store.get(IDS[500], at=at), 100),
        "set": median_ms(lambda: store.set(IDS[7], float(next(counter)), source="bench"), 200),
    }
    return figures


def bench_sqlite(directory: Path) -> dict[str, list[float]]:
    import sqlite3

    path = directory / "parameters.db"
    store = SQLiteParameterStore(path)
    bare = sqlite3.connect(path)
    query = (
        "SELECT id, value, time_us, source FROM parameter_value AS v WHERE seq = "
        "(SELECT seq FROM parameter_value WHERE id = v.id ORDER BY time_us DESC, seq DESC LIMIT 1)"
    )
    try:
        return measure(store, lambda: bare.execute(query).fetchall())
    finally:
        bare.close()
        store.close()


@contextmanager
def influx_server(directory: Path) -> Iterator[str | None]:
    try:
        from tests.influx import running_influxd
    except ImportError:  # run from outside the checkout
        yield None
        return
    try:
        with running_influxd(directory / "influxd") as server:
            yield server.url
    except RuntimeError as exc:  # influxd not installed
        print(f"  influxd: {exc}")
        yield None


def bench_influx(url: str) -> dict[str, list[float]]:
    store = InfluxParameterStore(url, "bench")
    raw = httpx.Client(base_url=url)
    statement = 'SELECT * FROM "parameter" GROUP BY "id" ORDER BY time DESC LIMIT 1'
    try:
        return measure(store, lambda: raw.post("/query", data={"db": "bench", "q": statement, "epoch": "u"}).json())
    finally:
        raw.close()
        store.close()


@collector("parameters")
def figures() -> list[Figure]:
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        results["SQLite"] = bench_sqlite(directory)
        with influx_server(directory) as url:
            if url is not None:
                results["InfluxDB 1.6"] = bench_influx(url)
    figures: list[Figure] = []
    for backend, r in results.items():
        bare = "bare SQL query" if backend == "SQLite" else "bare InfluxDB query"
        figures += [
            Figure("parameters", f"parameter snapshot of 1,000, cold, {backend}", "ms", r["snapshot 1000 cold"],
                   r["snapshot 1000 bare"], bare, digits=3,
                   note="the store decodes and validates every value and fills its cache."),
            Figure("parameters", f"parameter snapshot of 1,000, cached, {backend}", "ms", r["snapshot 1000 cached"],
                   r["snapshot 1000 bare"], bare, digits=3),
            Figure("parameters", f"single set, {backend}", "ms", r["set"], None, "", digits=3),
        ]  # fmt: skip
    return figures


def main() -> None:
    from bench._report import run

    run(["parameters"], "parameters")


if __name__ == "__main__":
    main()
