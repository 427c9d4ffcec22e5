"""Files whose writer died: make them plain readable HDF5 again, marked "incomplete".

A writer killed mid-run leaves its file's consistency flags set (a plain
``h5py.File(path, "r")`` refuses it), while SWMR readers still see every flushed
point.  Recovery copies the file through an SWMR reader into a fresh file, keeps the
rows ``/entry/points`` counts (written only once they were on disk: a row beyond it may
be torn, as a full disk leaves them), sets ``/entry/status`` to "incomplete", and
replaces the original atomically.  A live writer holds a lock in ``DATA_DIR/.writing/``;
files whose lock can be taken are orphans.  A writer killed while creating its file
leaves it under a hidden name (see `creating_path`), with no point in it: that one is
removed.  A file that cannot be read at all is set aside (`set_aside`, with a record),
so it never stops a later run; a file that cannot be rewritten for lack of space is
left for the next attempt.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py

from ._hdf5_files import (
    LIBVER,
    LOCK_DIR,
    STATUS_INCOMPLETE,
    STATUS_RUNNING,
    STR,
    create_status,
    creating_path,
    read_status,
    set_aside,
)

logger = logging.getLogger(__name__)


@dataclass
class Recovered:
    """One file recovery looked at: ``action`` is "recovered", "set aside" or "kept" (retried later)."""

    path: Path
    action: str
    points: int = 0
    reason: str = ""


def recover_file(path: Path, reason: str = "the writer stopped before the run ended") -> int:
    """Rewrite ``path`` readable, with ``/entry/status`` "incomplete" and ``reason``; its points.

    Items that cannot be read are left out and named in ``/entry/reason``.
    """
    temporary = path.with_name(path.name + ".recovering")
    lost: list[str] = []
    try:
        with h5py.File(path, "r", swmr=True) as source, h5py.File(temporary, "w", libver=LIBVER) as target:
            for key, value in source.attrs.items():
                target.attrs[key] = value
            points = int(source["entry/points"][()]) if "entry/points" in source else 0
            _copy(source, target, lost)
            entry = target.require_group("entry")
            for rows in ("data", "shots", "sequences/point_sequence"):
                _truncate(entry.get(rows), points)
            for name in ("status", "reason", "points"):
                if name in entry:
                    del entry[name]
            create_status(entry, STATUS_INCOMPLETE)
            entry.create_dataset("points", data=points)
            why = reason if not lost else f"{reason}; unreadable, left out: {', '.join(lost)}"
            entry.create_dataset("reason", data=why, dtype=STR)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return points


def _copy(source: h5py.Group, target: h5py.Group, lost: list[str]) -> None:
    """Copy ``source`` into ``target``: each item whole (hard links shared, as in the
    original), and an item that cannot be copied whole item by item, recording what
    cannot be read."""
    for name in source:
        try:
            source.copy(source[name], target, name=name)
            continue
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            if name in target:
                del target[name]
            error = exc
        item = source.get(name)
        if isinstance(item, h5py.Group):
            group = target.create_group(name)
            group.attrs.update(dict(item.attrs))
            _copy(item, group, lost)
        else:
            logger.warning("recovery: %s/%s cannot be read (%s); it is left out", source.name, name, error)
            lost.append(f"{source.name.rstrip('/')}/{name}")


def _truncate(item: h5py.Group | h5py.Dataset | None, rows: int) -> None:
    """Rows beyond ``rows`` (never counted as written) are dropped."""
    if item is None:
        return
    datasets = [item] if isinstance(item, h5py.Dataset) else [d for d in item.values() if isinstance(d, h5py.Dataset)]
    for dataset in datasets:
        if dataset.ndim >= 1 and dataset.maxshape[0] is None and dataset.shape[0] > rows:
            dataset.resize(rows, axis=0)


def recover_incomplete(directory: Path) -> list[Path]:
    """Recover every file under ``directory`` whose writer is gone; the files recovered."""
    return [r.path for r in recover_orphans(directory) if r.action == "recovered"]


def recover_orphans(directory: Path) -> list[Recovered]:
    """Every file under ``directory`` whose writer is gone: recovered, set aside or kept."""
    locks = directory / LOCK_DIR
    results: list[Recovered] = []
    if not locks.is_dir():
        return results
    for lock in sorted(locks.glob("*.lock")):
        result = recover_one(directory / lock.name.removesuffix(".lock"))
        if result is not None:
            results.append(result)
    return results


def recover_one(path: Path) -> Recovered | None:
    """Recover ``path`` if its writer is gone (None: its writer is alive, or nothing to do)."""
    lock = path.parent / LOCK_DIR / (path.name + ".lock")
    if not lock.exists():
        return None
    with open(lock, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its writer is alive
        result = _recover_locked(path)
        if result is None or result.action != "kept":
            lock.unlink(missing_ok=True)
    return result


def _recover_locked(path: Path) -> Recovered | None:
    creating = creating_path(path)
    if creating.exists():
        # Its writer died while making it, before the first point: a torn file with
        # nothing measured in it.
        creating.unlink()
        logger.warning("removed %s: its writer died while creating it, before any point", creating)
    if not path.is_file():
        return None
    try:
        status, points = read_status(path)
        if status != STATUS_RUNNING and _plainly_readable(path):
            return None
        points = recover_file(path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC or "No space left" in str(exc):  # try again when there is room
            logger.error("could not recover %s for lack of space; it is retried later", path)
            return Recovered(path, "kept", reason=str(exc))
        return _set_aside(path, exc)
    except Exception as exc:  # a torn file: h5py raises RuntimeError, KeyError, ValueError...
        return _set_aside(path, exc)
    logger.warning("recovered %s: its writer died mid-run; marked incomplete with %d points", path, points)
    return Recovered(path, "recovered", points)


def _plainly_readable(path: Path) -> bool:
    """Whether a plain reader opens ``path`` (a writer that did not close it leaves its
    consistency flags set, and only SWMR readers open it)."""
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def _set_aside(path: Path, exc: BaseException) -> Recovered:
    reason = f"recovery could not read it: {type(exc).__name__}: {exc}"
    target = set_aside(path, reason)
    return Recovered(target, "set aside", reason=reason)
