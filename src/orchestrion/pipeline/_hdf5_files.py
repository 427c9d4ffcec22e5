"""A run's HDF5 file on disk: its name, its status values, the lock of its writer.

A live writer holds an exclusive lock in ``DATA_DIR/.writing/NAME.lock`` while the file
is open: recovery takes the locks it can and treats those files as orphans.  A file
is made under a hidden name (`creating_path`) and renamed once its layout is on disk.
A file that cannot be recovered is moved to ``DATA_DIR/.unrecoverable/`` with a JSON
record beside it, so that it never blocks a later run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import h5py

logger = logging.getLogger(__name__)

DEFAULT_FILE_PREFIX = "{date}_scan{scan_id}_{experiment}_{uid8}"
LOCK_DIR = ".writing"
SET_ASIDE_DIR = ".unrecoverable"

STATUS_RUNNING = "running"
STATUS_ERROR = "error"
STATUS_INCOMPLETE = "incomplete"
STATUS_SIZE = 32  # bytes, the terminating NUL included


def create_status(group: h5py.Group, status: str) -> h5py.Dataset:
    """``group/status``: a fixed-length string, so that the stop can overwrite it in an SWMR
    handle, NUL-terminated, so that HDF5's tools show ``"success"`` and not the padding
    (h5py's fixed-length strings are NUL-padded: h5dump prints every ``\\000``)."""
    string = h5py.h5t.C_S1.copy()
    string.set_size(STATUS_SIZE)
    string.set_strpad(h5py.h5t.STR_NULLTERM)
    dataset = h5py.Dataset(h5py.h5d.create(group.id, b"status", string, h5py.h5s.create(h5py.h5s.SCALAR)))
    write_status(dataset, status)
    return dataset


def write_status(dataset: h5py.Dataset, status: str) -> None:
    dataset[()] = status.encode()[: STATUS_SIZE - 1]


# The v110 format: what SWMR needs, and what the HDF5 1.10 tools of current Linux
# distributions read (files in the 1.14 format made Debian's h5dump fail).
LIBVER = ("v110", "latest")
STR = h5py.string_dtype()


def safe_name(text: str) -> str:
    """``text`` as a name for a file: letters, digits, ``._-`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-")
    return cleaned or "unnamed"


def iso_time(timestamp: float | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def file_name_for(start: Mapping[str, Any], file_prefix: str = DEFAULT_FILE_PREFIX) -> str:
    """The file name (with ``.h5``) of a run: date, scan id, experiment, short uid.

    ``file_prefix`` is a `str.format` template over ``date``, ``scan_id``, ``experiment``,
    ``uid``, ``uid8`` and ``start`` (the start document).  The result is cleaned so that
    it is one plain file name, whatever the metadata holds.
    """
    uid = str(start["uid"])
    fields = {
        "date": datetime.fromtimestamp(float(start.get("time", time.time()))).strftime("%Y%m%d-%H%M%S"),
        "scan_id": start.get("scan_id", 0),
        "experiment": start.get("experiment") or start.get("plan_name") or "run",
        "uid": uid,
        "uid8": uid[:8],
        "start": start,
    }
    try:
        name = file_prefix.format(**fields)
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        logger.warning("file prefix %r does not fit run %s (%s); using the default", file_prefix, uid, exc)
        name = DEFAULT_FILE_PREFIX.format(**fields)
    return safe_name(name)[:180] + ".h5"


def creating_path(path: Path) -> Path:
    """Where the file at ``path`` is made, hidden, until its layout is on disk."""
    return path.with_name(f".{path.name}.creating")


def lock_path(directory: Path, file_name: str) -> Path:
    return directory / LOCK_DIR / (file_name + ".lock")


def hold_lock(directory: Path, file_name: str) -> IO[bytes]:
    """The lock a writer holds while its file is open: recovery skips live files."""
    path = lock_path(directory, file_name)
    path.parent.mkdir(exist_ok=True)
    handle = open(path, "wb")  # noqa: SIM115 - held for the file's lifetime
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def release_lock(handle: IO[bytes] | None, directory: Path, file_name: str, *, keep_record: bool = False) -> None:
    """Let go of the writer's lock; ``keep_record``: leave the lock file for recovery to find."""
    if handle is None:
        return
    if not keep_record:
        lock_path(directory, file_name).unlink(missing_ok=True)
    handle.close()


def read_status(path: Path) -> tuple[str, int]:
    """(``/entry/status``, ``/entry/points``) of a file, read as an SWMR reader would."""
    with h5py.File(path, "r", swmr=True) as f:
        status = f["entry/status"][()]
        points = int(f["entry/points"][()]) if "points" in f["entry"] else 0
    return (status.decode() if isinstance(status, bytes) else str(status)), points


_READ_STATUS = """
import json, sys, h5py
with h5py.File(sys.argv[1], "r", swmr=True) as f:
    status = f["entry/status"][()]
    print(json.dumps([status.decode() if isinstance(status, bytes) else str(status), int(f["entry/points"][()])]))
"""


def read_status_elsewhere(path: Path, timeout: float = 60.0) -> tuple[str, int]:
    """`read_status` from a fresh process: this one's HDF5 may still hold a handle on the
    file whose close failed (a full disk), which makes it refuse to open the file again."""
    done = subprocess.run([sys.executable, "-c", _READ_STATUS, str(path)], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    if done.returncode != 0:
        raise OSError(f"{path} cannot be read: {done.stderr.strip().splitlines()[-1:]}")
    status, points = json.loads(done.stdout)
    return str(status), int(points)


def set_aside(path: Path, reason: str) -> Path:
    """Move ``path`` to ``.unrecoverable/`` with a JSON record of why; the new path."""
    target_dir = path.parent / SET_ASIDE_DIR
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    n = 1
    while target.exists():
        target = target_dir / f"{path.stem}-{n}{path.suffix}"
        n += 1
    path.replace(target)
    record = {"file": path.name, "moved_to": str(target), "reason": reason, "time": datetime.now(UTC).isoformat()}
    target.with_name(target.name + ".json").write_text(json.dumps(record, indent=1) + "\n")
    logger.error("set aside %s as %s: %s", path, target, reason)
    return target


def make_durable(path: Path) -> None:
    """``path``'s data and its name on disk: the file, then its directory (the entry a
    rename made), each fsynced.  Until then a power cut may leave a finished run's file
    torn or gone after the run was reported written (and, in services mode, after its
    documents left the bus)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
