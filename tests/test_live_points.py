"""The API live stream's point readers: a job's points from its HDF5 file and from the bus.

Files are written by the real serializer and documents published by the real publisher
into a real redis-server; the readers are the ones the API server's `/live` uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrion.api import _live
from orchestrion.api._live import BusPointReader, PointReader
from orchestrion.bus import BusKeys, BusPublisher, Follower
from orchestrion.config import OrchestrionConfig
from orchestrion.jobs import Job, JobStatus
from orchestrion.pipeline import Serializer

from .bus_support import RedisServer
from .pipeline_docs import whole_run
from .support import wait_until

POINTS, SHOTS = 12, 4


def documents() -> list[tuple[str, dict[str, Any]]]:
    return list(whole_run(POINTS, shots=SHOTS))


def write_file(directory: Path, docs: list[tuple[str, dict[str, Any]]]) -> Path:
    with Serializer(directory, buffer_points=5) as serializer:
        for name, doc in docs:
            serializer(name, doc)
    (path,) = serializer.artifacts["stream_data"]
    return Path(path)


def running_job(**fields: Any) -> Job:
    return Job(id=7, experiment="spectroscopy", status=JobStatus.RUNNING, priority=0, submitter="tester",
               created=time.time(), **fields)  # fmt: skip


def every_batch(reader: PointReader | BusPointReader) -> Iterator[_live.PointBatch]:
    while (batch := reader.new_batch()) is not None:
        yield batch


def test_a_files_points_carry_their_shots_and_the_data_keys_of_their_names(tmp_path: Path) -> None:
    path = write_file(tmp_path, documents())
    reader = PointReader(tmp_path, running_job(hdf5=str(path)))
    (batch,) = every_batch(reader)
    assert [p["index"] for p in batch.points] == list(range(POINTS))
    assert batch.keys["sequencer_counts"] == "sequencer-counts"
    assert batch.points[3]["sequencer_counts"] == [3, 4, 5, 6]
    assert batch.omitted == {}
    assert reader.new_batch() is None  # nothing new: nothing sent again


def test_a_file_read_late_comes_in_bounded_batches_and_large_rows_are_named_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_file(tmp_path, documents())
    monkeypatch.setattr(_live, "LIVE_ROW_ELEMENTS", SHOTS - 1)
    monkeypatch.setattr(_live, "LIVE_BATCH_ELEMENTS", 40)
    batches = list(every_batch(PointReader(tmp_path, running_job(hdf5=str(path)))))
    assert len(batches) > 1
    assert [p["index"] for b in batches for p in b.points] == list(range(POINTS))
    assert all(b.omitted == {"sequencer_counts": [SHOTS]} for b in batches)
    assert all("sequencer_counts" not in p for b in batches for p in b.points)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def test_points_come_from_the_bus_and_from_the_file_once_the_run_has_left_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = OrchestrionConfig(home=tmp_path / "home", bus_redis_url=redis_server.url)  # type: ignore[call-arg]
    keys = BusKeys(prefix=f"test-live-{time.monotonic_ns()}:")
    docs = documents()
    run_uid = docs[0][1]["uid"]
    publisher = BusPublisher(config, keys=keys)
    try:
        for name, doc in docs:
            publisher(name, doc)  # the stop returns once the whole run is in Redis
    finally:
        publisher.close()
    path = write_file(tmp_path, docs)
    with Follower(config, keys=keys) as follower:
        on_bus = BusPointReader(follower, tmp_path, running_job(run_uids=[run_uid]))
        (batch,) = every_batch(on_bus)
        assert on_bus.on_bus
        assert [p["index"] for p in batch.points] == list(range(POINTS))
        assert batch.keys["sequencer-counts"] == "sequencer-counts"
        assert batch.points[3]["sequencer-counts"] == [3, 4, 5, 6]
        # The run's start and primary descriptor come with its first points, once: a
        # client draws them without waiting for the catalog to have the run.
        assert batch.start is not None
        assert batch.start["uid"] == run_uid
        assert batch.descriptor is not None
        assert batch.descriptor["name"] == "primary"
        assert batch.to_dict(7)["start"] == batch.start

        # The run expires from the bus (`bus_retention`): its file gives the same points.
        follower.client.delete(keys.run(run_uid))
        late = BusPointReader(follower, tmp_path, running_job(run_uids=[run_uid], hdf5=str(path)))
        (from_file,) = every_batch(late)
        assert not late.on_bus
        assert [p["index"] for p in from_file.points] == list(range(POINTS))
        assert from_file.points[3]["sequencer_counts"] == [3, 4, 5, 6]


def test_a_runs_start_is_sent_once_with_its_descriptor_before_any_point(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = OrchestrionConfig(home=tmp_path / "home", bus_redis_url=redis_server.url)  # type: ignore[call-arg]
    keys = BusKeys(prefix=f"test-live-start-{time.monotonic_ns()}:")
    docs = documents()
    run_uid = docs[0][1]["uid"]
    first_event = next(i for i, (name, _doc) in enumerate(docs) if name == "event")
    publisher = BusPublisher(config, keys=keys)
    try:
        with Follower(config, keys=keys) as follower:
            reader = BusPointReader(follower, tmp_path, running_job(run_uids=[run_uid]))
            # Asked before the run reaches the bus (the job table knows its run first; the
            # publisher hands documents over within about 0.1 s): nothing yet, and the bus
            # is asked again, not given up for the file (it was, for the whole run).
            assert reader.new_batch() is None
            for name, doc in docs[:first_event]:
                publisher(name, doc)
            described = wait_until(reader.new_batch, timeout=10, what="the start on the bus")
            assert reader.new_batch() is None  # sent once
            assert described.points == []  # no point yet: the start and descriptor
            assert described.start is not None
            assert described.start["uid"] == run_uid
            assert described.descriptor is not None
            for name, doc in docs[first_event:]:
                publisher(name, doc)
            batches = list(every_batch(reader))
            assert [p["index"] for b in batches for p in b.points] == list(range(POINTS))
            assert all(b.start is None and b.descriptor is None for b in batches)
            assert all("start" not in b.to_dict(7) for b in batches)
    finally:
        publisher.close()
