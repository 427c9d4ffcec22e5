"""A run's documents kept on disk until the catalog holds the run (without a catalog:
until its file does): what repair replays, and what a post-processing process that
takes over a dead one's run rebuilds it from.

Post-processing appends every document of a run, as it arrives and before any stage
sees it, to ``HOME/spool/RUN_UID.docs`` (pickled: documents carry numpy arrays).  The
spool is removed once the run has been read back complete from the catalog (or file).  While a
spool is written its writer holds an exclusive lock on it, so repair leaves live runs
alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

SPOOL_DIR = "spool"
SUFFIX = ".docs"
HDF5_NOTE = "orchestrion_hdf5"
"""Not an event-model document: ``{"path": ...}``, the run's HDF5 file, kept for repair."""

Document = tuple[str, dict[str, Any]]


def spool_dir(home: Path) -> Path:
    return home / SPOOL_DIR


class SpoolWriter:
    """Appends one run's documents to its spool file; `discard` removes it.

    Each document is written through (pickled and handed to the OS) before any stage
    sees it, so the spool is never behind the run's HDF5 file, whatever kills the
    process.
    """

    def __init__(self, directory: Path, run_uid: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{run_uid}{SUFFIX}"
        self._handle: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 - the run's lifetime
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        self.failure: str | None = None

    def append(self, name: str, doc: dict[str, Any]) -> None:
        if self._handle is None:
            return
        try:
            pickle.dump((name, doc), self._handle, protocol=pickle.HIGHEST_PROTOCOL)
            self._handle.flush()
        except (OSError, pickle.PicklingError) as exc:
            # A full disk: the catalog is written all the same; only a later repair lacks it.
            self.failure = f"the spool {self.path} could not be written: {exc}"
            logger.error("%s", self.failure)
            self.close()

    def close(self) -> None:
        """Release the spool (kept on disk)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

    def discard(self) -> None:
        """The run is safe in the catalog: the spool goes."""
        self.path.unlink(missing_ok=True)
        self.close()


@contextlib.contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Whether the spool at ``path`` is free (its writer gone); held for the block."""
    with open(path, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def discard_spool(home: Path, run_uid: str) -> bool:
    """Remove the spool an earlier, dead writer of ``run_uid`` left; False if its writer lives.

    For a run that is written again from the start (the document bus re-processes a run
    whose worker died): the new writer's spool must not extend the old one, and a catalog
    repair must not replay the old attempt beside the new.
    """
    path = spool_dir(home) / f"{run_uid}{SUFFIX}"
    if not path.exists():
        return True
    with claim(path) as free:
        if free:
            path.unlink(missing_ok=True)
        return free


def read_spool(path: Path) -> list[Document]:
    """Every whole document in the spool (a torn last one is left out)."""
    documents: list[Document] = []
    with open(path, "rb") as handle:
        while True:
            try:
                documents.append(pickle.load(handle))
            except EOFError:
                break
            except (pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
                logger.warning("spool %s: its last document is torn (%s); it is left out", path, exc)
                break
    return documents


def spooled_runs(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []
