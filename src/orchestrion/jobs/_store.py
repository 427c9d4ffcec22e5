"""The job table: every submission is a row in SQLite, with migrations."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from orchestrion.config import OrchestrionConfig
from orchestrion.errors import InputError, OrchestrionError


class JobStatus(StrEnum):
    """Where a job is in its life."""

    SUBMITTED = "submitted"  #: accepted, not yet in the queue server's queue
    QUEUED = "queued"  #: in the queue server's queue
    RUNNING = "running"  #: the RunEngine is executing it
    PAUSED = "paused"  #: the RunEngine paused it; `orchestrion resume` goes on
    #: its runs have stopped (the hardware has moved on); post-processing is still
    #: closing their files and completing their catalog entries
    WRITING = "writing"
    DONE = "done"  #: its plan completed and post-processing confirmed every run written
    #: its plan completed but not all of its data could be written (``error`` says what
    #: is missing, ``hdf5`` and ``tiled`` where the rest is)
    INCOMPLETE = "incomplete"
    FAILED = "failed"  #: its plan raised, or the worker died under it
    CANCELLED = "cancelled"  #: removed from the queue, or aborted while running

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.DONE, JobStatus.INCOMPLETE, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.WRITING)
# What post-processing confirmed of a run (the `runs` table's ``written``).
WRITTEN = "written"  # file closed, catalog entry complete
NOT_ALL_WRITTEN = "incomplete"  # some of its points are missing from the file or the catalog


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
    # Attempts (one per queue-server item that ran for the job) and runs (what the
    # worker knows of each run, recorded from its start: a run cut short keeps its uid).
    """
    ALTER TABLE jobs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE runs (
        run_uid TEXT PRIMARY KEY,
        job_id INTEGER,
        item_uid TEXT,
        started REAL,
        finished REAL,
        exit_status TEXT,
        points INTEGER,
        hdf5 TEXT,
        tiled TEXT,
        analysis TEXT NOT NULL DEFAULT '{}',
        parameters_timestamp TEXT,
        code_commit TEXT,
        code_clean INTEGER
    );
    CREATE INDEX runs_by_job ON runs (job_id, started);
    CREATE TABLE interruptions (
        item_uid TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        time REAL NOT NULL
    );
    """,
    # API server (resubmission): the job a resubmitted job was made from.
    """
    ALTER TABLE jobs ADD COLUMN parent INTEGER;
    """,
    # The executor (ADR 0310): jobs run back to back in long-lived queue items; a run is
    # confirmed written by post-processing after its stop (``written``, ``reason``).
    """
    ALTER TABLE runs ADD COLUMN written TEXT;
    ALTER TABLE runs ADD COLUMN reason TEXT;
    CREATE TABLE executors (
        item_uid TEXT PRIMARY KEY,
        started REAL NOT NULL,
        retired REAL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Attempt:
    """One run of a job's queue item: what the queue server ran, and how it ended."""

    item_uid: str
    status: JobStatus
    started: float | None = None
    finished: float | None = None
    exit_status: str | None = None  #: the queue server's word for how the item ended
    error: str | None = None
    run_uids: list[str] = field(default_factory=list)
    hdf5: list[str] = field(default_factory=list)  #: the files of its runs
    points: int | None = None  #: points of its runs, as the worker counted them at their stops
    pushed_back: bool = False  #: the queue server put a copy of it back in its queue

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["status"] = self.status.value
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Attempt:
        return cls(**{**document, "status": JobStatus(document["status"])})


@dataclass(frozen=True)
class RunRecord:
    """What the worker recorded of one run (the `runs` table)."""

    run_uid: str
    job_id: int | None
    item_uid: str | None
    started: float | None
    finished: float | None
    exit_status: str | None
    points: int | None
    hdf5: str | None
    tiled: str | None
    analysis: dict[str, float]
    parameters_timestamp: str | None
    code_commit: str | None
    code_clean: bool | None
    written: str | None = None  #: what post-processing confirmed (`WRITTEN`, `NOT_ALL_WRITTEN`); None: not yet
    reason: str | None = None  #: why not all of it was written


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
    attempts: list[Attempt] = field(default_factory=list)
    parent: int | None = None  #: the job this one was resubmitted from

    @property
    def run_uid(self) -> str | None:
        """The job's (last) run, the one `orchestrion job` reports."""
        return self.run_uids[-1] if self.run_uids else None

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["status"] = self.status.value
        document["run_uid"] = self.run_uid
        document["attempts"] = [attempt.to_dict() for attempt in self.attempts]
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
    created: float | None = None
    parent: int | None = None


_COLUMNS = (
    "id", "experiment", "status", "priority", "submitter", "created", "arguments", "scan",
    "repetitions", "shots", "pattern", "user_group", "source", "started", "finished", "error",
    "item_uid", "run_uids", "points", "hdf5", "tiled", "parameters_timestamp", "code_commit",
    "code_clean", "analysis", "attempts", "parent",
)  # fmt: skip
_RUN_COLUMNS = (
    "run_uid", "job_id", "item_uid", "started", "finished", "exit_status", "points", "hdf5", "tiled",
    "analysis", "parameters_timestamp", "code_commit", "code_clean", "written", "reason",
)  # fmt: skip


def _row_to_job(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in _COLUMNS}
    values["status"] = JobStatus(values["status"])
    values["arguments"] = json.loads(values["arguments"])
    values["scan"] = None if values["scan"] is None else json.loads(values["scan"])
    values["run_uids"] = json.loads(values["run_uids"])
    values["analysis"] = json.loads(values["analysis"])
    values["code_clean"] = None if values["code_clean"] is None else bool(values["code_clean"])
    values["attempts"] = [Attempt.from_dict(a) for a in json.loads(values["attempts"])]
    return Job(**values)


def _row_to_run(row: sqlite3.Row) -> RunRecord:
    values = {name: row[name] for name in _RUN_COLUMNS}
    values["analysis"] = json.loads(values["analysis"])
    values["code_clean"] = None if values["code_clean"] is None else bool(values["code_clean"])
    return RunRecord(**values)


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

    def by_attempt(self, item_uid: str) -> Job | None:
        """The job one of whose earlier attempts ran ``item_uid`` (its item is now another)."""
        pattern = f'%"item_uid": {json.dumps(item_uid)}%'
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE attempts LIKE ?", (pattern,)).fetchone()
        return None if row is None else _row_to_job(row)

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
                "INSERT INTO jobs (experiment, arguments, scan, priority, repetitions, shots, pattern,"
                " submitter, user_group, source, created, status, item_uid, code_commit, code_clean, parent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.experiment, json.dumps(dict(job.arguments), default=str),
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

    def add_run_uids(self, job_id: int, run_uids: Sequence[str]) -> None:
        with self.write():
            job = self.find(job_id)
            if job is None:
                return
            merged = list(job.run_uids) + [u for u in run_uids if u not in job.run_uids]
            if merged != job.run_uids:
                self.update(job_id, run_uids=merged)

    def record_run_start(
        self,
        run_uid: str,
        *,
        job_id: int | None,
        started: float,
        hdf5: str | None,
        parameters_timestamp: str | None,
        code_commit: str | None,
        code_clean: bool | None,
    ) -> None:
        """A run has opened: its uid is the job's from now on, whatever happens to the worker."""
        with self.write():
            self._db.execute(
                "INSERT OR IGNORE INTO runs (run_uid, job_id, started, hdf5, parameters_timestamp, code_commit,"
                " code_clean) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_uid, job_id, started, hdf5, parameters_timestamp, code_commit, _encode("code_clean", code_clean)),
            )
            if self._open_job(job_id) is not None:
                assert job_id is not None
                self.add_run_uids(job_id, [run_uid])
                self.update(job_id, hdf5=hdf5, parameters_timestamp=parameters_timestamp,
                            code_commit=code_commit, code_clean=code_clean)  # fmt: skip

    def record_run_stop(
        self,
        run_uid: str,
        *,
        job_id: int | None,
        measured_points: int,
        exit_status: str,
        finished: float,
        analysis: Mapping[str, float],
    ) -> None:
        """A run has stopped: the hardware has moved on, its job is no longer running.

        What the RunEngine measured; post-processing confirms what is durable later
        (`confirm_run`).  A running job whose run stopped is `WRITING` from now on.
        """
        with self.write():
            self._db.execute(
                "INSERT INTO runs (run_uid, job_id, finished, exit_status, points, analysis) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_uid) DO UPDATE SET finished = excluded.finished,"
                " exit_status = excluded.exit_status, points = COALESCE(points, excluded.points),"
                " analysis = excluded.analysis",
                (run_uid, job_id, finished, exit_status, measured_points, json.dumps(dict(analysis))),
            )
            job = self._open_job(job_id)
            if job is None:
                return
            values: dict[str, Any] = {"analysis": dict(analysis)}
            if job.status in (JobStatus.RUNNING, JobStatus.PAUSED):
                values["status"] = JobStatus.WRITING
            if job.points is None:
                values["points"] = measured_points
            self.update(job.id, **values)

    def confirm_run(
        self, run_uid: str, *, written: str, points: int, hdf5: str | None, tiled: str | None, reason: str | None
    ) -> None:
        """Post-processing has read the run back: what is durable, and where.

        The run's job gets its details; a job that waits in `WRITING` for this run ends
        `DONE`, or `INCOMPLETE` when not all of a run's data could be written.
        """
        with self.write():
            self._db.execute(
                "UPDATE runs SET written = ?, points = ?, hdf5 = COALESCE(?, hdf5), tiled = ?, reason = ?"
                " WHERE run_uid = ?",
                (written, points, hdf5, tiled, reason, run_uid),
            )
            row = self._db.execute("SELECT job_id FROM runs WHERE run_uid = ?", (run_uid,)).fetchone()
            job = self.find(row["job_id"]) if row is not None and row["job_id"] is not None else None
            # A finished job's record changes only for its own runs (see `_open_job`).
            if job is None or (job.status.terminal and run_uid not in job.run_uids):
                return
            if job.run_uid == run_uid:
                self.update(job.id, points=points, hdf5=hdf5 or job.hdf5, tiled=tiled)
            self._settle(job.id)

    def note_run_pending(self, run_uid: str, *, points: int, hdf5: str | None, reason: str) -> None:
        """Post-processing has written the run's file but not yet all of the rest: the
        job stays `WRITING`, and says what it waits for."""
        with self.write():
            self._db.execute(
                "UPDATE runs SET points = ?, hdf5 = COALESCE(?, hdf5), reason = ? WHERE run_uid = ?",
                (points, hdf5, reason, run_uid),
            )
            row = self._db.execute("SELECT job_id FROM runs WHERE run_uid = ?", (run_uid,)).fetchone()
            job = self.find(row["job_id"]) if row is not None and row["job_id"] is not None else None
            if job is not None and job.status is JobStatus.WRITING:
                self.update(job.id, points=points, hdf5=hdf5 or job.hdf5, error=f"run {run_uid[:8]}: {reason}")

    def runs_written(self, run_uids: Sequence[str]) -> tuple[JobStatus, str | None] | None:
        """`DONE`, or `INCOMPLETE` with the reason, once every run is confirmed; None before."""
        runs = self.runs(run_uids)
        if len(runs) < len(set(run_uids)) or any(r.written is None for r in runs):
            return None
        missing = [r for r in runs if r.written != WRITTEN]
        if not missing:
            return JobStatus.DONE, None
        return JobStatus.INCOMPLETE, "; ".join(f"run {r.run_uid[:8]}: {r.reason or 'not all written'}" for r in missing)

    def _settle(self, job_id: int) -> None:
        """A job whose plan has ended (``finished`` set) and that waits in `WRITING`: its
        final status once post-processing has confirmed each of its last attempt's runs."""
        job = self.get(job_id)
        if job.status is not JobStatus.WRITING or job.finished is None:
            return
        run_uids = job.attempts[-1].run_uids if job.attempts else job.run_uids
        written = self.runs_written(run_uids)
        if written is None:
            return
        status, error = written
        attempts = list(job.attempts)
        if attempts:
            attempts[-1] = replace(attempts[-1], status=status, error=error)
        self.update(job_id, status=status, error=error, attempts=attempts)

    # -- the executor (ADR 0310) --------------------------------------------------------

    def executor_started(self, item_uid: str) -> None:
        with self.write():
            self._db.execute(
                "INSERT OR IGNORE INTO executors (item_uid, started) VALUES (?, ?)", (item_uid, time.time())
            )

    def retired_executors(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT item_uid FROM executors WHERE retired IS NOT NULL").fetchall()
        return {str(row["item_uid"]) for row in rows}

    def next_waiting(self) -> Job | None:
        """The job that should run next: highest priority, then first submitted (plain items too)."""
        return self._first_queued("")

    def next_executor_job(self) -> Job | None:
        """The waiting job an executor would take first (plain items' jobs left out)."""
        return self._first_queued(" AND item_uid IS NULL")

    def _first_queued(self, condition: str) -> Job | None:
        # The one claim order: highest priority, then first submitted (ADR 0310).
        with self._lock:
            row = self._db.execute(
                f"SELECT * FROM jobs WHERE status = ?{condition} ORDER BY priority DESC, created, id LIMIT 1",
                (JobStatus.QUEUED.value,),
            ).fetchone()
        return None if row is None else _row_to_job(row)

    def running_in(self, item_uid: str) -> Job | None:
        """The job the executor item ``item_uid`` is running (or has paused), if any."""
        for job in self.list([JobStatus.RUNNING, JobStatus.PAUSED]):
            if job.attempts and job.attempts[-1].item_uid == item_uid and job.attempts[-1].finished is None:
                return job
        return None

    def unfinished_in(self, item_uid: str) -> builtins.list[Job]:
        """Jobs whose current attempt ran in ``item_uid`` and was not ended by it."""
        return [
            job for job in self.list(list(ACTIVE))
            if job.attempts and job.attempts[-1].item_uid == item_uid
            and (job.attempts[-1].finished is None or job.status is JobStatus.WRITING)
        ]  # fmt: skip

    def claim_next(self, item_uid: str) -> Job | None:
        """Take the next job for the executor item ``item_uid``, atomically; None: its turn is over.

        The executor's turn is over when nothing waits, or when what should run next is a
        plain queue-server item (it runs as itself, in its own item).  The executor is then
        retired in the same transaction, so a submission that comes after it knows that it
        will not take the new job.
        """
        with self.write():
            job = self.next_waiting()
            if job is None or job.item_uid is not None:
                self._db.execute("UPDATE executors SET retired = ? WHERE item_uid = ?", (time.time(), item_uid))
                return None
            now = time.time()
            attempt = Attempt(item_uid=item_uid, status=JobStatus.RUNNING, started=now)
            self.update(
                job.id, status=JobStatus.RUNNING, started=job.started or now, finished=None,
                attempts=[*job.attempts, attempt],
            )  # fmt: skip
            return self.get(job.id)

    def end_attempt(
        self, job_id: int, item_uid: str, status: JobStatus, *, exit_status: str, error: str | None = None
    ) -> Job:
        """The end of a job's plan in the executor item ``item_uid``: its attempt, with its runs.

        A plan that completed leaves the job `WRITING` until post-processing has confirmed
        its runs (`confirm_run`), or ends it at once if it already has.
        """
        with self.write():
            job = self.get(job_id)
            attempts = list(job.attempts)
            if not attempts or attempts[-1].item_uid != item_uid or attempts[-1].finished is not None:
                return job
            last = attempts[-1]
            runs = [r for r in self.runs_without_item(job_id) if (r.started or 0.0) >= (last.started or 0.0) - 1.0]
            run_uids = [r.run_uid for r in runs]
            self.claim_runs(item_uid, run_uids, job_id)
            counted = [r.points for r in runs]
            now = time.time()
            attempts[-1] = replace(
                last, status=status, finished=now, exit_status=exit_status, error=error, run_uids=run_uids,
                hdf5=[r.hdf5 for r in runs if r.hdf5],
                points=sum(p for p in counted if p is not None) if counted and None not in counted else None,
            )  # fmt: skip
            final = JobStatus.WRITING if status is JobStatus.DONE else status
            self.update(job_id, status=final, finished=now, error=error, attempts=attempts)
            self._settle(job_id)
            return self.get(job_id)

    def _open_job(self, job_id: int | None) -> Job | None:
        """The job a start document names, if it may still get runs.

        A start document's job id is only the item's metadata, which any queue-server
        client can write: a finished job's record is not changed by it.  (The scheduler
        gives such a run to the item's own job, from the queue server's history.)
        """
        job = self.find(job_id) if job_id is not None else None
        return None if job is None or job.status.terminal else job

    def runs(self, run_uids: Sequence[str]) -> builtins.list[RunRecord]:
        """The recorded runs among ``run_uids``, in that order (unknown uids left out)."""
        if not run_uids:
            return []
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM runs WHERE run_uid IN ({','.join('?' * len(run_uids))})", list(run_uids)
            ).fetchall()
        found = {row["run_uid"]: _row_to_run(row) for row in rows}
        return [found[uid] for uid in run_uids if uid in found]

    def runs_without_item(self, job_id: int) -> builtins.list[RunRecord]:
        """Runs recorded for ``job_id`` that no attempt has claimed yet, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM runs WHERE job_id = ? AND item_uid IS NULL ORDER BY started", (job_id,)
            ).fetchall()
        return [_row_to_run(row) for row in rows]

    def claim_runs(self, item_uid: str, run_uids: Sequence[str], job_id: int) -> None:
        """The runs of one attempt: each knows its item and job from now on."""
        with self.write():
            for run_uid in run_uids:
                self._db.execute(
                    "INSERT INTO runs (run_uid, job_id, item_uid) VALUES (?, ?, ?) ON CONFLICT (run_uid)"
                    " DO UPDATE SET item_uid = excluded.item_uid, job_id = excluded.job_id",
                    (run_uid, job_id, item_uid),
                )

    def note_interruption(self, item_uid: str, reason: str) -> None:
        """Why the running item is about to be cut short (the queue server will only say 'destroyed')."""
        with self.write():
            self._db.execute(
                "INSERT OR IGNORE INTO interruptions (item_uid, reason, time) VALUES (?, ?, ?)",
                (item_uid, reason, time.time()),
            )

    def interruption(self, item_uid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reason FROM interruptions WHERE item_uid = ?", (item_uid,)).fetchone()
        return None if row is None else str(row["reason"])


def _encode(column: str, value: Any) -> Any:
    if column == "attempts":
        return json.dumps([a.to_dict() if isinstance(a, Attempt) else a for a in value])
    if column in ("arguments", "run_uids", "scan", "analysis"):
        return None if value is None else json.dumps(value, default=str)
    if isinstance(value, JobStatus):
        return value.value
    if column == "code_clean" and value is not None:
        return int(bool(value))
    return value


def jobs_db_path(config: OrchestrionConfig) -> Path:
    return config.home / "jobs.sqlite"
