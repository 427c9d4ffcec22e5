"""The default parameter store: one SQLite file under `$ORCHESTRION_HOME`, nothing to set up."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Hashable
from datetime import datetime
from pathlib import Path

from ._spec import ParameterSpec, ParameterValue, ParameterValueType
from ._store import BaseParameterStore, ParameterStoreError, from_micros, to_micros

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS parameter_value (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT    NOT NULL,
    time_us INTEGER NOT NULL,  -- microseconds since the Unix epoch, UTC
    kind    TEXT    NOT NULL CHECK (kind IN ('bool', 'int', 'float', 'str')),
    value           NOT NULL,  -- no affinity: stored as given (INTEGER, REAL, TEXT)
    source  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS parameter_value_id_time ON parameter_value (id, time_us, seq);
"""

# The latest row at or before a time for each id of a JSON list: one statement for any
# number of ids, one index probe per id however long the history grows.
_LATEST = """
SELECT v.id, v.kind, v.value, v.time_us, v.source
FROM json_each(?) AS wanted
JOIN parameter_value AS v ON v.seq = (
    SELECT seq FROM parameter_value
    WHERE id = wanted.value AND time_us <= ?
    ORDER BY time_us DESC, seq DESC LIMIT 1
)
"""
_NO_LIMIT = 2**63 - 1


def _kind(value: ParameterValueType) -> str:
    return type(value).__name__  # bool is checked before int by the CHECK's closed set


def _decode(kind: str, raw: int | float | str) -> ParameterValueType:
    if kind == "bool":
        return bool(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return str(raw)


class SQLiteParameterStore(BaseParameterStore):
    """Parameters with full history in one SQLite file (WAL mode: many processes share it).

    One row per change. The cache is checked against `PRAGMA data_version`, which changes
    whenever another connection (another process) commits, so a value written elsewhere is
    seen on the next read at the cost of one pragma.
    """

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit; the one connection is shared between threads under a lock.
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            if self._db.execute("PRAGMA user_version").fetchone()[0] == 0:
                self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {_SCHEMA_VERSION}; COMMIT;")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except (OSError, sqlite3.Error) as exc:
            raise ParameterStoreError(f"parameter store {self.path}: {exc}") from None
        if version != _SCHEMA_VERSION:
            raise ParameterStoreError(f"parameter store {self.path}: unknown schema version {version}")
        self._db_lock = threading.Lock()
        self._data_version = self._pragma_data_version()
        self._writes = 0  # this connection's writes: `PRAGMA data_version` counts only the others'

    def __repr__(self) -> str:
        return f"SQLiteParameterStore({str(self.path)!r})"

    def _pragma_data_version(self) -> int:
        with self._db_lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def change_mark(self) -> Hashable:
        # Every write of another connection (another process, the sqlite3 shell, even an
        # UPDATE of the history) changes `data_version`; this one's own are counted.
        with self._db_lock:
            return (int(self._db.execute("PRAGMA data_version").fetchone()[0]), self._writes)

    def _revalidate_cache(self) -> None:
        version = self._pragma_data_version()
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version

    def _write(self, value: ParameterValue, spec: ParameterSpec) -> None:
        row = (value.id, to_micros(value.timestamp), _kind(value.value), value.value, value.source)
        try:
            with self._db_lock:
                self._writes += 1  # before the write: one that fails half-way still changes the mark
                self._db.execute(
                    "INSERT INTO parameter_value (id, time_us, kind, value, source) VALUES (?, ?, ?, ?, ?)", row
                )
        except sqlite3.Error as exc:
            raise ParameterStoreError(f"parameter store {self.path}: writing {value.id} failed: {exc}") from None

    def _write_defaults(self, defaults: list[tuple[ParameterValue, ParameterSpec]]) -> list[str]:
        # Check and insert in one write transaction: a value another process stores at the
        # same moment is never shadowed by a default written after it.
        created = []
        try:
            with self._db_lock:
                self._writes += 1
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for value, _spec in defaults:
                        cursor = self._db.execute(
                            "INSERT INTO parameter_value (id, time_us, kind, value, source) "
                            "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM parameter_value WHERE id = ?)",
                            (
                                value.id,
                                to_micros(value.timestamp),
                                _kind(value.value),
                                value.value,
                                value.source,
                                value.id,
                            ),
                        )
                        if cursor.rowcount:
                            created.append(value.id)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise ParameterStoreError(f"parameter store {self.path}: declaring parameters failed: {exc}") from None
        return created

    # Rows were validated on their way in: `model_construct` skips validating them again
    # (it was two thirds of a 1,000-parameter snapshot).
    def _read(self, ids: list[str], at: datetime | None) -> dict[str, ParameterValue]:
        limit = _NO_LIMIT if at is None else to_micros(at)
        with self._db_lock:
            rows = self._db.execute(_LATEST, (json.dumps(ids), limit)).fetchall()
        return {
            pid: ParameterValue.model_construct(
                id=pid, value=_decode(kind, raw), timestamp=from_micros(micros), source=source
            )
            for pid, kind, raw, micros, source in rows
        }

    def _read_history(self, parameter_id: str, since: datetime | None, until: datetime | None) -> list[ParameterValue]:
        low = -_NO_LIMIT if since is None else to_micros(since)
        high = _NO_LIMIT if until is None else to_micros(until)
        with self._db_lock:
            rows = self._db.execute(
                "SELECT kind, value, time_us, source FROM parameter_value "
                "WHERE id = ? AND time_us BETWEEN ? AND ? ORDER BY time_us, seq",
                (parameter_id, low, high),
            ).fetchall()
        return [
            ParameterValue.model_construct(
                id=parameter_id, value=_decode(kind, raw), timestamp=from_micros(micros), source=source
            )
            for kind, raw, micros, source in rows
        ]

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
