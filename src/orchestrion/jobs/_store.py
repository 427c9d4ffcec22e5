"""The job table: every submission is a row in SQLite, with migrations."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from orchestrion.config import OrchestrionConfig
from orchestrion.errors import InputError, OrchestrionError


class JobStatus(StrEnum):
    """Where a job is in its life."""

    SUBMITTED = "submitted"  #: accepted, not yet in the queue server's queue
    QUEUED = "queued"  #: in the queue server's queue
    RUNNING = "running"  #: the RunEngine is executing it (or has paused it)
    DONE = "done"  #: its plan completed
    FAILED = "failed"  #: its plan raised, or the worker died under it
    CANCELLED = "cancelled"  #: removed from the queue, or aborted while running

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE = (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.RUNNING)


class UnknownJobError(InputError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# Each entry moves the schema one version up; `PRAGMA user_version` says how far a
# database has come.  Append, never edit: a lab's database has already run the old ones.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        experiment TEXT NOT NULL,
        arguments TEXT NOT NULL DEFAULT '{}',
        scan TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        repetitions INTEGER NOT NULL DEFAULT 1,
        shots INTEGER,
        submitter TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        status TEXT NOT NULL,
        error TEXT,
        item_uid TEXT UNIQUE,
        run_uids TEXT NOT NULL DEFAULT '[]',
        hdf5 TEXT,
        tiled TEXT
    );
    CREATE INDEX jobs_by_status ON jobs (status, priority DESC, created);
    """,
    """
    ALTER TABLE jobs ADD COLUMN user_group TEXT NOT NULL DEFAULT 'primary';
    ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'orchestrion';
    ALTER TABLE jobs ADD COLUMN pattern TEXT NOT NULL DEFAULT 'linear';
    ALTER TABLE jobs ADD COLUMN points INTEGER;
    ALTER TABLE jobs ADD COLUMN parameters_timestamp TEXT;
    ALTER TABLE jobs ADD COLUMN code_commit TEXT;
    ALTER TABLE jobs ADD COLUMN code_clean INTEGER;
    """,
    """
    ALTER TABLE jobs ADD COLUMN analysis TEXT NOT NULL DEFAULT '{}';
    """,
    # API server (resubmission): the job a resubmitted job was made from.
    """
    ALTER TABLE jobs ADD COLUMN parent INTEGER;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    id: int
    experiment: str
    status: JobStatus
    priority: int
    submitter: str
    created: float
    arguments: dict[str, Any] = field(default_factory=dict)
    scan: list[str] | None = None
    repetitions: int = 1
    shots: int | None = None
    pattern: str = "linear"
    user_group: str = "primary"
    source: str = "orchestrion"
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    item_uid: str | None = None
    run_uids: list[str] = field(default_factory=list)
    points: int | None = None
    hdf5: str | None = None
    tiled: str | None = None
    parameters_timestamp: str | None = None
    code_commit: str | None = None
    code_clean: bool | None = None
    analysis: dict[str, float] = field(default_factory=dict)
    parent: int | None = None  #: the job this one was resubmitted from

    @property
    def run_uid(self) -> str | None:
        """The job's (last) run, the one `orchestrion job` reports."""
        return self.run_uids[-1] if self.run_uids else None

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["status"] = self.status.value
        document["run_uid"] = self.run_uid
        return document


@dataclass(frozen=True)
class NewJob:
    """What a submission writes, before the queue server has seen it."""

    experiment: str
    arguments: Mapping[str, Any]
    priority: int
    submitter: str
    user_group: str
    scan: Sequence[str] | None = None
    repetitions: int = 1
    shots: int | None = None
    pattern: str = "linear"
    source: str = "orchestrion"
    status: JobStatus = JobStatus.SUBMITTED
    item_uid: str | None = None
    code_commit: str | None = None
    code_clean: bool | None = None
    id: int | None = None  # adopted items may carry the id they were submitted with
    created: float | None = None
    parent: int | None = None


_COLUMNS = (
    "id", "experiment", "status", "priority", "submitter", "created", "arguments", "scan",
    "repetitions", "shots", "pattern", "user_group", "source", "started", "finished", "error",
    "item_uid", "run_uids", "points", "hdf5", "tiled", "parameters_timestamp", "code_commit",
    "code_clean", "analysis", "parent",
)  # fmt: skip


def _row_to_job(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in _COLUMNS}
    values["status"] = JobStatus(values["status"])
    values["arguments"] = json.loads(values["arguments"])
    values["scan"] = None if values["scan"] is None else json.loads(values["scan"])
    values["run_uids"] = json.loads(values["run_uids"])
    values["analysis"] = json.loads(values["analysis"])
    values["code_clean"] = None if values["code_clean"] is None else bool(values["code_clean"])
    return Job(**values)


class JobStore:
    """The job table of one `$ORCHESTRION_HOME`, shared by clients, the scheduler and the worker.

    Every process opens its own connection.  Writers that must agree with the queue
    server (submit, cancel, the scheduler's reconciliation) do so inside `write()`, which
    holds SQLite's write lock: readers keep seeing the last committed state meanwhile.
    """

    def __init__(self, path: Path, *, migrate_to: int = SCHEMA_VERSION, durable: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # Autocommit mode: transactions are begun explicitly (BEGIN IMMEDIATE).
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: an accepted job survives a power cut.  NORMAL (the worker's recorder): no
        # fsync per commit, so the RunEngine does not wait on the disk at each run's end;
        # a power cut may lose the last run's details, not the job (its row and run uids
        # come from the submission and the queue server's history).
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._migrate(migrate_to)

    @classmethod
    def open(cls, config: OrchestrionConfig, *, durable: bool = True) -> JobStore:
        return cls(jobs_db_path(config), durable=durable)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, target: int) -> None:
        with self.write():
            version = self.schema_version
            if version > SCHEMA_VERSION:
                raise OrchestrionError(
                    f"{self.path}: job table schema {version} is newer than this Orchestrion knows "
                    f"({SCHEMA_VERSION}); upgrade Orchestrion"
                )
            for number in range(version, target):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")

    @contextmanager
    def write(self) -> Iterator[JobStore]:
        """One write transaction; rolled back if the block raises.  Re-entrant in a thread."""
        with self._lock:
            if self._db.in_transaction:
                yield self
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- reading -------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no job {job_id}")
        return _row_to_job(row)

    def list(self, status: JobStatus | Sequence[JobStatus] | None = None, *, limit: int | None = None) -> list[Job]:
        """Jobs, newest first; only those with ``status`` if given."""
        statuses = [status] if isinstance(status, JobStatus) else list(status or [])
        query = "SELECT * FROM jobs"
        if statuses:
            query += f" WHERE status IN ({','.join('?' * len(statuses))})"
        query += " ORDER BY id DESC"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(query, [s.value for s in statuses]).fetchall()
        return [_row_to_job(r) for r in rows]

    def by_item_uids(self, item_uids: Sequence[str]) -> dict[str, Job]:
        if not item_uids:
            return {}
        jobs: dict[str, Job] = {}
        with self._lock:
            for start in range(0, len(item_uids), 500):  # SQLite's bound-parameter limit
                chunk = list(item_uids[start : start + 500])
                query = f"SELECT * FROM jobs WHERE item_uid IN ({','.join('?' * len(chunk))})"
                for row in self._db.execute(query, chunk):
                    jobs[row["item_uid"]] = _row_to_job(row)
        return jobs

    def waiting_priorities(self) -> tuple[int, int] | None:
        """(lowest, highest) priority of the jobs waiting to run (queued or submitted); None if none."""
        waiting = (JobStatus.SUBMITTED.value, JobStatus.QUEUED.value)
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(priority), MAX(priority) FROM jobs WHERE status IN (?, ?)", waiting
            ).fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def find(self, job_id: int) -> Job | None:
        try:
            return self.get(job_id)
        except UnknownJobError:
            return None

    # -- writing -------------------------------------------------------------------------

    def insert(self, job: NewJob) -> int:
        with self.write():
            cursor = self._db.execute(
                "INSERT INTO jobs (id, experiment, arguments, scan, priority, repetitions, shots, pattern,"
                " submitter, user_group, source, created, status, item_uid, code_commit, code_clean, parent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id, job.experiment, json.dumps(dict(job.arguments), default=str),
                    None if job.scan is None else json.dumps(list(job.scan)), job.priority,
                    job.repetitions, job.shots, job.pattern, job.submitter, job.user_group,
                    job.source, time.time() if job.created is None else job.created,
                    job.status.value, job.item_uid, job.code_commit,
                    None if job.code_clean is None else int(job.code_clean), job.parent,
                ),
            )  # fmt: skip
            assert cursor.lastrowid is not None
            return int(cursor.lastrowid)

    def update(self, job_id: int, **values: Any) -> None:
        """Set columns of one job (status as `JobStatus`, run_uids as a list)."""
        if not values:
            return
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"no job column {sorted(unknown)[0]!r}")
        encoded = {k: _encode(k, v) for k, v in values.items()}
        assignments = ", ".join(f"{k} = ?" for k in encoded)
        with self.write():
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*encoded.values(), job_id])

    def delete(self, job_id: int) -> None:
        with self.write():
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def add_run_uids(self, job_id: int, run_uids: Sequence[str]) -> None:
        with self.write():
            job = self.find(job_id)
            if job is None:
                return
            merged = list(job.run_uids) + [u for u in run_uids if u not in job.run_uids]
            if merged != job.run_uids:
                self.update(job_id, run_uids=merged)

    def record_run(
        self,
        job_id: int,
        *,
        run_uid: str,
        points: int,
        hdf5: str | None,
        tiled: str | None,
        parameters_timestamp: str | None,
        code_commit: str | None,
        code_clean: bool | None,
        analysis: dict[str, float] | None = None,
    ) -> None:
        """What the worker knows of a finished run of the job (the queue server does not)."""
        with self.write():
            if self.find(job_id) is None:
                return
            self.add_run_uids(job_id, [run_uid])
            self.update(
                job_id, points=points, hdf5=hdf5, tiled=tiled, parameters_timestamp=parameters_timestamp,
                code_commit=code_commit, code_clean=code_clean, analysis=dict(analysis or {}),
            )  # fmt: skip


def _encode(column: str, value: Any) -> Any:
    if column in ("arguments", "run_uids", "scan", "analysis"):
        return None if value is None else json.dumps(value, default=str)
    if isinstance(value, JobStatus):
        return value.value
    if column == "code_clean" and value is not None:
        return int(bool(value))
    return value


def jobs_db_path(config: OrchestrionConfig) -> Path:
    return config.home / "jobs.sqlite"
