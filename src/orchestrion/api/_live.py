"""The live stream: job-state changes and the running job's points, as server-sent events.

Job states come from the job table (the truth the scheduler and the worker keep).
Points come from the running job's HDF5 file, which the pipeline keeps readable while
it writes it (SWMR): rows appear there as they are flushed, within
`hdf5_flush_interval`.  When the document bus is there (Redis Streams), it is the
quicker source of points; the events keep their shape.
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

from orchestrion.jobs import Job


def sse(event: str, data: Any) -> str:
    """One server-sent event (``event:`` and one ``data:`` line of JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class PointReader:
    """New rows of ``/entry/data`` in the HDF5 file of one running job."""

    def __init__(self, data_dir: Path, job: Job) -> None:
        self.data_dir = data_dir
        self.job = job
        self.path: Path | None = None
        self.sent = 0

    def _find(self) -> Path | None:
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

    def new_points(self) -> list[dict[str, Any]]:
        """The points written since the last call (each a data key -> value mapping)."""
        if self.path is None:
            self.path = self._find()
            if self.path is None:
                return []
        try:
            with h5py.File(self.path, "r", swmr=True) as f:
                group = f.get("entry/data")
                if not isinstance(group, h5py.Group):
                    return []
                columns: dict[str, Any] = {}
                for name, dataset in group.items():
                    if isinstance(dataset, h5py.Dataset) and dataset.ndim == 1:
                        dataset.refresh()
                        columns[name] = dataset
                rows = min((d.shape[0] for d in columns.values()), default=0)
                if rows <= self.sent:
                    return []
                values = {name: d[self.sent : rows] for name, d in columns.items()}
        except (OSError, KeyError):
            return []
        points = [
            {name: _plain(column[i]) for name, column in values.items()} | {"index": self.sent + i}
            for i in range(rows - self.sent)
        ]
        self.sent = rows
        return points


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        item = value.item()
        return None if isinstance(item, float) and not np.isfinite(item) else item
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
