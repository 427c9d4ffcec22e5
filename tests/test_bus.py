"""The document bus with real Redis, Tiled and worker processes: runs written once, in
order, by whichever worker claims them; followed live; trimmed when acknowledged."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
import redis
from bluesky import RunEngine
from ophyd.sim import SynSignal

from orchestrion.bus import DONE, BusKeys, BusPublisher, Follower, build_bus_pipeline
from orchestrion.config import OrchestrionConfig, load_config

from .bus_support import (
    RedisServer,
    TiledServer,
    Workers,
    bus_env,
    count_plan,
    hdf5_points,
    run_files,
    state,
    tiled_points,
    wait_status,
)  # fmt: skip
from .detector_support import FRAME_SHAPE, blob_detector, count_then, detector_file
from .support import wait_until

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, TiledServer]]:
    redis_server = RedisServer(tmp_path_factory.mktemp("redis"))
    tiled = TiledServer(tmp_path_factory.mktemp("tiled"))
    redis_server.start()
    tiled.start()
    yield redis_server, tiled
    redis_server.stop()
    tiled.stop()


@pytest.fixture
def bus(
    servers: tuple[RedisServer, TiledServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[OrchestrionConfig, redis.Redis, Workers]]:
    redis_server, tiled = servers
    home = tmp_path / "home"
    # Each test its own bus: a fresh Redis database, the keys of earlier tests gone.
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    env = bus_env(home, redis_server, tiled, ORCHESTRION_BUS_RETENTION="0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    home.mkdir()
    workers = Workers(home, env)
    yield load_config(), client, workers
    workers.stop()
    client.close()


def test_runs_are_written_once_in_order_by_the_workers_and_the_bus_is_trimmed(
    bus: tuple[OrchestrionConfig, redis.Redis, Workers], servers: tuple[RedisServer, TiledServer]
) -> None:
    config, client, workers = bus
    _, tiled = servers
    workers.start("post-processing-1")
    workers.start("post-processing-2")
    RE = RunEngine({}, call_returns_result=True)
    pipeline = build_bus_pipeline(config)
    pipeline.subscribe(RE)
    uids = [RE(count_plan(40, 0.0)).run_start_uids[0] for _ in range(3)]
    for uid in uids:
        assert pipeline.wait_catalogued(uid, timeout=120), state(client, uid)
    pipeline.close()

    files = run_files(config.data_dir)
    assert len(files) == 3
    workers_used = set()
    for uid in uids:
        final = state(client, uid)
        assert final["status"] == DONE
        workers_used.add(final["worker"])
        status, values = hdf5_points(Path(final["hdf5"]))
        assert status == "success"
        stop, catalogued = tiled_points(tiled, uid)
        assert stop["exit_status"] == "success"
        assert values == catalogued
        assert len(set(values)) == len(values) == 40
        assert values == sorted(values)
        # The RunEngine's side reports what the worker read back and acknowledged on, as
        # embedded mode reports it: the outcome, the durable points, the file, the node.
        summary = pipeline.summaries.runs[uid]
        assert summary.hdf5 == final["hdf5"]
        outcome = pipeline.outcome(uid, timeout=0)
        assert outcome is not None
        assert outcome == summary.outcome == json.loads(final["outcome"])
        assert outcome["status"] == summary.status == "success"
        assert outcome["points"] == outcome["bundled"] == summary.points == 40
        assert outcome["file_complete"] is outcome["catalog_complete"] is True
        assert outcome["hdf5"] == final["hdf5"]
        assert outcome["tiled"] == summary.tiled == f"{tiled.uri}/api/v1/metadata/{uid}"
        assert outcome["catalog_rows"] == 40
    # Acknowledged by every group (post-processing, the logbook connector): trimmed.
    keys = BusKeys()
    wait_until(lambda: client.xlen(keys.runs) == 0, timeout=30, what="the announcements to be trimmed")
    wait_until(lambda: not any(client.exists(keys.run(u)) for u in uids), timeout=30, what="run streams gone")
    logbook = [json.loads(line) for line in (config.home / "logbook.jsonl").read_text().splitlines()]
    assert [entry["uid"] for entry in logbook] == uids
    assert all(entry["points"] == 40 and entry["exit_status"] == "success" for entry in logbook)


def test_a_late_follower_gets_the_whole_run_raw_and_bundled_and_reads_analysis_back(
    bus: tuple[OrchestrionConfig, redis.Redis, Workers],
) -> None:
    config, _, _ = bus  # no worker: the run stays on the bus
    RE = RunEngine({}, call_returns_result=True)
    publisher = BusPublisher(config)
    RE.subscribe(publisher)
    emitted: list[tuple[str, dict[str, Any]]] = []
    RE.subscribe(lambda name, doc: emitted.append((name, doc)))
    uid = RE(count_plan(25, 0.0)).run_start_uids[0]
    publisher.close()

    with Follower(config) as follower:
        raw = list(follower.documents(uid, timeout=5))
        assert [name for name, _ in raw] == [name for name, _ in emitted]
        assert [doc["uid"] for _, doc in raw if "uid" in doc] == [doc["uid"] for _, doc in emitted if "uid" in doc]
        bundled = list(follower.bundled(uid, timeout=5))
        descriptors = {d["uid"]: d["name"] for n, d in bundled if n == "descriptor"}
        points = [d["data"]["det"] for n, d in bundled if n == "event" and descriptors[d["descriptor"]] == "bundled"]
        assert points == [doc["data"]["det"] for name, doc in emitted if name == "event"]
        assert len(points) == 25
        follower.publish_analysis(uid, {"center": 12.0}, producer="test-fit")
        results = list(follower.analysis(uid))
        assert [(r["producer"], r["result"]) for r in results] == [("test-fit", {"center": 12.0})]


def test_a_detectors_stream_resource_and_datum_documents_reach_the_workers_pipeline(
    bus: tuple[OrchestrionConfig, redis.Redis, Workers],
    servers: tuple[RedisServer, TiledServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, tiled = servers
    # The detector writes where the served catalog may read (its readable storage),
    # outside the home's data directory: the run's file links it by its absolute path.
    monkeypatch.setenv("ORCHESTRION_DETECTOR_DATA_DIR", str(tiled.detectors))
    _, client, workers = bus
    config = load_config()
    assert config.detectors_dir == tiled.detectors
    workers.env["ORCHESTRION_DETECTOR_DATA_DIR"] = str(tiled.detectors)
    workers.env["ORCHESTRION_BUS_RETENTION"] = "60"  # the run's stream stays to be read back
    workers.start("post-processing-1")
    RE = RunEngine({}, call_returns_result=True)
    detector = blob_detector(config.detectors_dir, file_name=f"blob-{config.home.parent.name}")
    emitted: list[str] = []
    RE.subscribe(lambda name, doc: emitted.append(name))
    pipeline = build_bus_pipeline(config)
    pipeline.subscribe(RE)
    uid = RE(count_then(detector, 3)).run_start_uids[0]
    assert pipeline.wait_catalogued(uid, timeout=120), state(client, uid)
    pipeline.close()
    final = state(client, uid)
    assert final["status"] == DONE
    outcome = json.loads(final["outcome"])
    assert outcome["status"] == "success", outcome["problems"]
    assert {(e["data_key"], e["found"]) for e in outcome["external"]} == {("det", 3), ("det-sum", 3)}
    with Follower(config) as follower:
        names = [name for name, _ in follower.documents(uid, timeout=5)]
    assert names == emitted
    assert names.count("stream_resource") == 2
    assert names.count("stream_datum") == 6
    path = detector_file(config.detectors_dir, f"blob-{config.home.parent.name}")
    with h5py.File(final["hdf5"], "r") as f:
        link = f["entry/external/det"].get("data", getlink=True)
        assert link.filename == str(path)
        frames = f["entry/external/det/data"][()]
    assert frames.shape == (3, *FRAME_SHAPE)
    catalog = tiled.client()
    try:
        frame = np.asarray(catalog[uid]["primary/det"][2]).reshape(FRAME_SHAPE)
    finally:
        catalog.context.close()
    np.testing.assert_array_equal(frame, frames[2])


def array_plan(points: int) -> Iterator[Any]:
    """``bp.count`` of 128 KiB arrays (above SMALL_POINT_BYTES), point ``k`` all ``k``."""
    counter = itertools.count()
    image = SynSignal(func=lambda: np.full(1 << 14, float(next(counter))), name="image", labels={"detectors"})
    return bp.count([image], num=points)  # type: ignore[no-any-return]


def run_arrays(config: OrchestrionConfig, client: redis.Redis, points: int) -> tuple[str, dict[str, Any]]:
    RE = RunEngine({}, call_returns_result=True)
    pipeline = build_bus_pipeline(config)
    pipeline.subscribe(RE)
    uid = RE(array_plan(points)).run_start_uids[0]
    pipeline.wait_catalogued(uid, timeout=120)
    pipeline.close()
    final = wait_status(client, uid, (DONE,))
    return uid, json.loads(final["outcome"])


def test_a_workers_large_arrays_are_registered_from_its_file_where_the_catalog_server_reads_it(
    servers: tuple[RedisServer, TiledServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_server, tiled = servers
    # The worker's home inside the served catalog's readable storage: its files are readable.
    home = tiled.detectors / "worker-home"
    home.mkdir()
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    env = bus_env(home, redis_server, tiled, ORCHESTRION_BUS_RETENTION="0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    workers = Workers(home, env)
    try:
        workers.start("post-processing-1")
        uid, outcome = run_arrays(load_config(), client, 3)
        assert outcome["status"] == "success", outcome["problems"]
        catalog = tiled.client()
        try:
            for stream in ("bundled", "primary"):
                node = catalog[uid][f"{stream}/image"]
                assert node.data_sources()[0].management == "external"
                assert [float(row[0]) for row in node.read()] == [1.0, 2.0, 3.0]  # describe() read 0
        finally:
            catalog.context.close()
    finally:
        workers.stop()
        client.close()


def test_a_catalog_server_that_cannot_read_the_workers_files_gets_the_arrays_copied(
    bus: tuple[OrchestrionConfig, redis.Redis, Workers], servers: tuple[RedisServer, TiledServer]
) -> None:
    config, client, workers = bus
    _, tiled = servers
    workers.start("post-processing-1")
    # Registered, read back: the server cannot read the worker's file; written again, copied.
    uid, outcome = run_arrays(config, client, 3)
    assert outcome["status"] == "success", outcome["problems"]
    assert "catalogued again with its arrays copied" in workers.log("post-processing-1")
    workers.stop()
    # Where that is known, the arrays are copied from the start.
    workers.env["ORCHESTRION_TILED_REGISTER_ARRAYS"] = "false"
    workers.start("post-processing-2")
    second, copied = run_arrays(config, client, 3)
    assert copied["status"] == "success", copied["problems"]
    assert "catalogued again" not in workers.log("post-processing-2")
    catalog = tiled.client()
    try:
        for run in (uid, second):
            node = catalog[run]["bundled/image"]
            assert node.data_sources()[0].management != "external"
            assert [float(row[0]) for row in node.read()] == [1.0, 2.0, 3.0]
    finally:
        catalog.context.close()
