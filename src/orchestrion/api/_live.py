"""The live stream: job-state changes and the running job's points, as server-sent events.

Job states come from the job table (the truth the scheduler and the worker keep).
Points come, in services mode, from the document bus (Redis Streams), where the
RunEngine's documents are within about 0.1 s (`BusPointReader`); otherwise, or once a
run has left the bus, from the job's HDF5 file, which the pipeline keeps readable while
it writes it (SWMR): rows appear there as they are flushed, within
`hdf5_flush_interval` (`PointReader`).  The events keep their shape.

A point carries its scalar columns and its small arrays (per-shot photon counts: the
data page's shot histograms), up to `LIVE_ROW_ELEMENTS` values a row; larger rows
(images, long traces) are left to the catalog, and each batch names what it left out.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from orchestrion.bus import Follower, RunNotOnBus
from orchestrion.jobs import Job
from orchestrion.schema import PRIMARY


def sse(event: str, data: Any) -> str:
    """One server-sent event (``event:`` and one ``data:`` line of JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


LIVE_ROW_ELEMENTS = 10_000
"""The largest array a live point carries (values per row): 10,000 shots' counts are
about 40 kB of JSON a point; a 1 MiB image is not streamed but read from Tiled."""
LIVE_BATCH_ELEMENTS = 1_000_000
"""Values sent in one batch at most: a client that connects late to a long run gets its
earlier points over several batches, not in one event of hundreds of megabytes."""


SERVER_STOPPING = threading.Event()
"""Set when this process's API server is asked to stop (`serve`): each live stream ends
at its next round.  uvicorn waits for every open response to end before it stops, and a
live stream has no end of its own: one GUI left open kept the server from stopping."""


@dataclass(frozen=True)
class PointBatch:
    """New rows of a job's file: each row by its file name, what the names stand for, what was left out."""

    points: list[dict[str, Any]]
    keys: dict[str, str]
    """File name -> event-model data key (the datasets' ``data_key`` attribute)."""
    omitted: dict[str, list[int]]
    """File name -> shape of one row, for the arrays too large to stream."""
    start: dict[str, Any] | None = None
    """The run's start document, in the first batch read from the bus: a client draws the
    run's points at once, without reading its start from the catalog first (which the
    post-processing worker writes a second or more later)."""
    descriptor: dict[str, Any] | None = None
    """The run's primary descriptor (units, hints), with the start."""

    def to_dict(self, job_id: int) -> dict[str, Any]:
        batch = {"job": job_id, "points": self.points, "keys": self.keys, "omitted": self.omitted}
        if self.start is not None:
            batch |= {"start": self.start, "descriptor": self.descriptor}
        return batch


class PointReader:
    """New rows of ``/entry/data`` in the HDF5 file of one running job."""

    def __init__(self, data_dir: Path, job: Job) -> None:
        self.data_dir = data_dir
        self.job = job
        self.path: Path | None = None
        self.sent = 0

    def find(self) -> Path | None:
        """The job's file: the one its row names, else the newest whose ``entry/job_id`` is the job's."""
        if self.job.hdf5:
            return Path(self.job.hdf5)
        started = self.job.started or self.job.created
        candidates = sorted(
            (p for p in self.data_dir.glob("*.h5") if p.stat().st_mtime >= started - 1.0),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for path in candidates:
            try:
                with h5py.File(path, "r", swmr=True) as f:
                    if _text(f["entry/job_id"][()]) == str(self.job.id):
                        return path
            except (OSError, KeyError):
                continue
        return None

    def new_batch(self) -> PointBatch | None:
        """The rows written since the last call, with their data keys; None if there are none."""
        if self.path is None:
            self.path = self.find()
            if self.path is None:
                return None
        try:
            with h5py.File(self.path, "r", swmr=True) as f:
                group = f.get("entry/data")
                if not isinstance(group, h5py.Group):
                    return None
                columns: dict[str, h5py.Dataset] = {}
                keys: dict[str, str] = {}
                omitted: dict[str, list[int]] = {}
                for name, dataset in group.items():
                    if not isinstance(dataset, h5py.Dataset) or dataset.ndim == 0:
                        continue
                    dataset.refresh()
                    row_shape = [int(n) for n in dataset.shape[1:]]
                    if int(np.prod(row_shape)) > LIVE_ROW_ELEMENTS:
                        omitted[name] = row_shape
                    else:
                        columns[name] = dataset
                    key = dataset.attrs.get("data_key")
                    if key is not None:
                        keys[name] = _text(key)
                # Every column grows row by row: the rows all columns hold are complete.
                rows = min((d.shape[0] for d in columns.values()), default=0)
                if rows <= self.sent:
                    return None
                per_row = sum(max(1, int(np.prod(d.shape[1:]))) for d in columns.values())
                rows = min(rows, self.sent + max(1, LIVE_BATCH_ELEMENTS // max(1, per_row)))
                values = {name: d[self.sent : rows] for name, d in columns.items()}
        except (OSError, KeyError):
            return None
        points = [
            {name: _plain(column[i]) for name, column in values.items()} | {"index": self.sent + i}
            for i in range(rows - self.sent)
        ]
        self.sent = rows
        return PointBatch(points, keys, omitted)


class BusPointReader:
    """New points of a job's run from the document bus: its primary events as they come.

    Rows are named by their data keys.  When the run is not on the bus (published before
    the bus was there, or expired after ``bus_retention``) the job's file is read instead,
    from the first point this reader has not sent.
    """

    def __init__(self, follower: Follower, data_dir: Path, job: Job) -> None:
        self.follower = follower
        self.job = job
        self.file = PointReader(data_dir, job)
        self.run_uid: str | None = None
        self.after = "0-0"
        self.on_bus = True
        self.sent = 0
        self._primary: set[str] = set()  # descriptor uids of the primary stream
        self._keys: dict[str, str] = {}
        self._omitted: dict[str, list[int]] = {}
        self._start: dict[str, Any] | None = None  # read, not yet sent
        self._descriptor: dict[str, Any] | None = None

    def new_batch(self) -> PointBatch | None:
        run_uid = self.job.run_uid
        if run_uid is None:
            return None  # the job's run has not started
        if run_uid != self.run_uid:
            # A job's next run: its points start again (the file reader follows the job's
            # latest file the same way).
            self.run_uid, self.after, self.on_bus, self.sent = run_uid, "0-0", True, 0
            self._primary.clear()
            self._keys, self._omitted = {}, {}
            self._start = self._descriptor = None
        if not self.on_bus:
            self.file.job, self.file.sent = self.job, max(self.file.sent, self.sent)
            return self.file.new_batch()
        points: list[dict[str, Any]] = []
        budget = LIVE_BATCH_ELEMENTS
        while budget > 0:
            try:
                documents, self.after = self.follower.read(run_uid, self.after)
            except RunNotOnBus:
                if not points and self.after == "0-0" and not self._file_written():
                    # Not on the bus *yet*: the publisher hands documents over within
                    # about 0.1 s of the RunEngine, and a job's run is known to the job
                    # table first.  Deciding for the file now would give up the bus for
                    # the whole run.  Asked again at the next call.
                    return None
                # Published before the bus was there, or expired: the file has it.
                self.on_bus = False
                break
            if not documents:
                break
            for name, doc in documents:
                if name == "start":
                    self._start = doc
                elif name == "descriptor" and doc.get("name") == PRIMARY:
                    self._describe(doc)
                    self._descriptor = doc
                elif name == "event" and doc.get("descriptor") in self._primary:
                    data = doc.get("data", {})
                    row = {key: data[key] for key in self._keys if key in data}  # JSON values already
                    # "time" as the file's rows have it: when the RunEngine read the point.
                    points.append(row | {"time": doc.get("time"), "index": self.sent})
                    self.sent += 1
                    budget -= sum(len(v) if isinstance(v, list) else 1 for v in row.values())
        # The start goes once, with the primary descriptor (no point comes before it).
        start, descriptor = self._start, self._descriptor
        described = start is not None and descriptor is not None
        if not points and not described:
            return None if self.on_bus else self.new_batch()
        if described:
            self._start = self._descriptor = None
        else:
            start = descriptor = None
        return PointBatch(points, dict(self._keys), dict(self._omitted), start=start, descriptor=descriptor)

    def _file_written(self) -> bool:
        """Whether the job's file exists: in services mode a worker writes it from the bus,
        so a run that has a file and is not on the bus has left it (or never was there)."""
        self.file.job = self.job
        return self.file.find() is not None

    def _describe(self, descriptor: dict[str, Any]) -> None:
        self._primary.add(str(descriptor["uid"]))
        for key, spec in descriptor.get("data_keys", {}).items():
            shape = [int(n) for n in spec.get("shape") or []]
            if int(np.prod(shape)) > LIVE_ROW_ELEMENTS:
                self._omitted[key] = shape
            else:
                self._keys[key] = key


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        item = value.item()
        return None if isinstance(item, float) and not np.isfinite(item) else item
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return [_plain(v) for v in value]  # JSON has no NaN: None where not finite
        return value.tolist()
    return value


def changed_jobs(
    before: dict[int, tuple[str, int | None, float | None]], now: dict[int, tuple[str, int | None, float | None]]
) -> Iterator[int]:
    """Ids of the jobs that are new or whose state changed."""
    for job_id, state in now.items():
        if before.get(job_id) != state:
            yield job_id


@dataclass(frozen=True)
class LiveClient:
    """A client connected to the live stream: whose key, which role, since when, from where."""

    name: str
    role: str
    since: float
    address: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LiveClients:
    """The live stream's connected clients (thread-safe): a client is listed while its stream is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[int, LiveClient] = {}
        self._tokens = itertools.count(1)

    def add(self, name: str, role: str, address: str) -> int:
        with self._lock:
            token = next(self._tokens)
            self._clients[token] = LiveClient(name, role, time.time(), address)
            return token

    def remove(self, token: int) -> None:
        with self._lock:
            self._clients.pop(token, None)

    def listed(self) -> list[LiveClient]:
        """Oldest connection first."""
        with self._lock:
            return sorted(self._clients.values(), key=lambda c: c.since)
