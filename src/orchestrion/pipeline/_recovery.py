"""Files whose writer died: make them plain readable HDF5 again, marked "incomplete".

A writer killed mid-run leaves its file's consistency flags set (a plain
``h5py.File(path, "r")`` refuses it), while SWMR readers still see every flushed
point.  Recovery copies the file through an SWMR reader into a fresh file, sets
``/entry/status`` to "incomplete", and replaces the original atomically.  A live writer
holds a lock in ``DATA_DIR/.writing/``; files whose lock can be taken are orphans.  A
writer killed while creating its file leaves it under a hidden name (see
`creating_path`), with no point in it: that one is removed.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import h5py

from ._hdf5 import _STATUS_DTYPE, _STR, LOCK_DIR, STATUS_INCOMPLETE, STATUS_RUNNING, creating_path

logger = logging.getLogger(__name__)


def recover_file(path: Path, reason: str = "the writer stopped before the run ended") -> None:
    """Rewrite ``path`` readable, with ``/entry/status`` "incomplete" and ``reason``."""
    temporary = path.with_name(path.name + ".recovering")
    with h5py.File(path, "r", swmr=True) as source, h5py.File(temporary, "w", libver="latest") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for name in source:
            source.copy(source[name], target, name=name)
        entry = target.require_group("entry")
        if "status" in entry:
            del entry["status"]
        entry.create_dataset("status", data=STATUS_INCOMPLETE, dtype=_STATUS_DTYPE)
        if "reason" not in entry:
            entry.create_dataset("reason", data=reason, dtype=_STR)
        if "data" in entry and "time" in entry["data"]:
            entry["points"][()] = entry["data"]["time"].shape[0]
    os.replace(temporary, path)


def recover_incomplete(directory: Path) -> list[Path]:
    """Recover every file under ``directory`` whose writer is gone; the files recovered."""
    locks = directory / LOCK_DIR
    recovered: list[Path] = []
    if not locks.is_dir():
        return recovered
    for lock in sorted(locks.glob("*.lock")):
        path = directory / lock.name.removesuffix(".lock")
        with open(lock, "ab") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            try:
                creating = creating_path(path)
                if creating.exists():
                    # Its writer died while making it, before the first point: a torn
                    # file with nothing measured in it.
                    creating.unlink()
                    logger.warning("removed %s: its writer died while creating it, before any point", creating)
                if path.is_file() and _status(path) == STATUS_RUNNING:
                    recover_file(path)
                    recovered.append(path)
                    logger.warning("recovered %s: its writer died mid-run; marked incomplete", path)
            except (OSError, KeyError) as exc:
                logger.error("could not recover %s: %s", path, exc)
                continue
            lock.unlink(missing_ok=True)
    return recovered


def _status(path: Path) -> str:
    with h5py.File(path, "r", swmr=True) as f:
        status = f["entry/status"][()]
    return status.decode() if isinstance(status, bytes) else str(status)
