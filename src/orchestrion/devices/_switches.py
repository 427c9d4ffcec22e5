"""Devices switched on and off at run time: who, when and why, kept under $ORCHESTRION_HOME.

The configuration files say what a lab has; an operator's switch says what it may use
today, without editing them.  Every switch is a row in `devices.sqlite` (the latest
per device wins, the earlier ones are its history), so the choice survives restarts
and every process of the lab (CLI, shell, queue-server worker, API server) reads the
same one.  The same file keeps the last connection attempt of each device, so a
process that does not own the hardware (a submission) knows which devices the one
that does could not reach.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SWITCHES_FILE = "devices.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS switches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    user TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS connections (
    device TEXT PRIMARY KEY,
    connected INTEGER NOT NULL,
    error TEXT NOT NULL,
    at TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class DeviceSwitch:
    """One operator's decision to enable or disable a device."""

    device: str
    enabled: bool
    user: str
    at: datetime
    reason: str = ""

    def describe(self) -> str:
        verb = "enabled" if self.enabled else "disabled"
        why = f": {self.reason}" if self.reason else ""
        return f"{verb} by {self.user} at {self.at.isoformat(timespec='seconds')}{why}"

    def to_dict(self) -> dict[str, object]:
        return {
            "device": self.device,
            "enabled": self.enabled,
            "user": self.user,
            "at": self.at.isoformat(),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> DeviceSwitch:
        """The switch `to_dict` gave (as the API server sends it)."""
        return cls(
            device=str(entry["device"]), enabled=bool(entry["enabled"]), user=str(entry["user"]),
            at=datetime.fromisoformat(str(entry["at"])), reason=str(entry.get("reason") or ""),
        )  # fmt: skip


@dataclass(frozen=True)
class ConnectionReport:
    """How the last attempt to connect a device ended, in whichever process made it."""

    device: str
    connected: bool
    error: str
    at: datetime
    pid: int


class DeviceSwitches:
    """The operators' switches and the last connection reports, in `home/devices.sqlite`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_home(cls, home: Path) -> DeviceSwitches:
        return cls(home / SWITCHES_FILE)

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=10.0)) as connection:
            connection.executescript(_SCHEMA)
            with connection:
                yield connection

    def record(self, device: str, *, enabled: bool, user: str, reason: str = "") -> DeviceSwitch:
        """Keep an operator's switch; it holds until the next one for the same device."""
        switch = DeviceSwitch(device, enabled, user, datetime.now(UTC), reason)
        with self._connect(write=True) as db:
            db.execute(
                "INSERT INTO switches (device, enabled, user, at, reason) VALUES (?, ?, ?, ?, ?)",
                (device, int(enabled), user, switch.at.isoformat(), reason),
            )
        return switch

    def current(self) -> dict[str, DeviceSwitch]:
        """The latest switch of every device that has one."""
        if not self.path.exists():
            return {}
        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT device, enabled, user, at, reason FROM switches"
                " WHERE id IN (SELECT MAX(id) FROM switches GROUP BY device)"
            ).fetchall()
        return {row[0]: _switch(row) for row in rows}

    def history(self, device: str | None = None) -> list[DeviceSwitch]:
        """Every switch, oldest first (of one device, if named)."""
        if not self.path.exists():
            return []
        query = "SELECT device, enabled, user, at, reason FROM switches"
        arguments: tuple[str, ...] = ()
        if device is not None:
            query += " WHERE device = ?"
            arguments = (device,)
        with self._connect(write=False) as db:
            return [_switch(row) for row in db.execute(query + " ORDER BY id", arguments)]

    def report_connections(self, results: dict[str, str | None], pid: int) -> None:
        """Keep how each device's connection ended (None: connected)."""
        now = datetime.now(UTC).isoformat()
        with self._connect(write=True) as db:
            db.executemany(
                "INSERT OR REPLACE INTO connections (device, connected, error, at, pid) VALUES (?, ?, ?, ?, ?)",
                [(name, int(error is None), error or "", now, pid) for name, error in results.items()],
            )

    def connections(self) -> dict[str, ConnectionReport]:
        if not self.path.exists():
            return {}
        with self._connect(write=False) as db:
            rows = db.execute("SELECT device, connected, error, at, pid FROM connections").fetchall()
        return {
            row[0]: ConnectionReport(row[0], bool(row[1]), row[2], datetime.fromisoformat(row[3]), row[4])
            for row in rows
        }


def _switch(row: tuple[str, int, str, str, str]) -> DeviceSwitch:
    return DeviceSwitch(row[0], bool(row[1]), row[2], datetime.fromisoformat(row[3]), row[4])
