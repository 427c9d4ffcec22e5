"""One run's documents into one NeXus HDF5 file, point by point, readable while written.

The file's name is reserved at the start document; the file is created, with the data
stream's datasets and every dataset the stop writes into, when that stream's
descriptor arrives, and at once switched to SWMR so other processes can read it
(``h5py.File(path, "r", swmr=True)``).  Points are buffered and written every
``buffer_points`` points or ``flush_interval`` seconds: the rows first, then (once
they are on disk) the ``points`` counter, so ``points`` never counts a row that was
not written.

At the stop document the last points, ``status``, ``reason``, ``end_time`` and the
stop document go into that same SWMR handle: the points and the run's outcome never
depend on reopening the file.  What has no shape in advance (other streams, fits,
plugins' layout, the links to detectors' own files) is added after the SWMR handle is
closed; a live SWMR reader holds a lock that refuses an ordinary reopen, so then the
file is reopened without HDF5's lock (the SWMR handle is closed and nothing else
writes it; a reader only misses the new groups until it reopens).  A writer that dies
leaves ``status`` at "running": `recover_incomplete` marks such files.  `outcome` is
what was read back from the file once it was closed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np
from event_model import DocumentRouter
from event_model.documents import Event, EventDescriptor, RunStart, RunStop, StreamDatum, StreamResource

from orchestrion.schema import ANALYSIS, POINT_SEQUENCE_KEY_MD, PRIMARY, SEQUENCE_HASH_KEY, SEQUENCE_JSON_KEY, SEQUENCES

from ._external import ExternalData, internal_keys
from ._hdf5_columns import Columns, column_type, text
from ._hdf5_files import (
    DEFAULT_FILE_PREFIX,
    LIBVER,
    STATUS_ERROR,
    STATUS_INCOMPLETE,
    STATUS_RUNNING,
    STR,
    creating_path,
    file_name_for,
    hold_lock,
    lock_path,
    make_durable,
    read_status,
    read_status_elsewhere,
    release_lock,
)
from ._hdf5_plugins import Hdf5Plugin, RunDocuments, load_plugins
from ._nexus import write_entry, write_extras, write_live_layout, write_stop

logger = logging.getLogger(__name__)


@dataclass
class FileOutcome:
    """What a run's file holds once closed, read back from it (not what was meant)."""

    path: Path | None
    status: str | None  # /entry/status as read back; None: the file could not be read
    points: int  # points durable in the file
    problems: list[str] = field(default_factory=list)


class Serializer(DocumentRouter):
    """Writes the documents of one run to one HDF5 file (the suitcase serializer interface).

    ``Serializer(directory, file_prefix=...)`` is a callable ``(name, doc)``; the file's
    name (under ``directory``, from ``file_prefix``, see `file_name_for`) is fixed at the
    start document.  ``data_stream`` is the stream that becomes ``/entry/data``;
    ``skip_streams`` are not copied to ``/entry/streams``.  The data key that carries
    each point's sequence hash is the one the start document names under
    `orchestrion.schema.POINT_SEQUENCE_KEY_MD`.  ``artifacts`` lists the file written;
    `close` ends the file (as "incomplete" if the stop document never came); `outcome`
    says what the closed file holds.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        file_prefix: str = DEFAULT_FILE_PREFIX,
        *,
        data_stream: str = PRIMARY,
        skip_streams: Iterable[str] = (),
        buffer_points: int = 64,
        flush_interval: float = 1.0,
        signal: str | None = None,
        plugins: Sequence[Hdf5Plugin] | None = None,
        swmr: bool = True,
    ) -> None:
        super().__init__()
        self.directory = Path(directory).resolve()
        self.file_prefix = file_prefix
        self.data_stream = data_stream
        self.skip_streams = set(skip_streams) | {SEQUENCES, ANALYSIS}
        self.buffer_points = max(1, int(buffer_points))
        self.flush_interval = float(flush_interval)
        self.signal = signal
        self.plugins = list(load_plugins() if plugins is None else plugins)
        self.swmr = swmr
        self.path: Path | None = None
        self.run_uid: str | None = None
        self.outcome: FileOutcome | None = None
        self._file: h5py.File | None = None
        self._created = False
        self._creating: Path | None = None  # the file while it is made, before `_publish`
        self._lock: IO[bytes] | None = None
        self._start_doc: dict[str, Any] | None = None
        self._hash_key: str | None = None
        self._stream_of: dict[str, str] = {}
        self._descriptors: dict[str, list[Mapping[str, Any]]] = {}
        self._data: Columns | None = None
        self._others: dict[str, Columns] = {}
        # Detectors' own files (StreamResource / StreamDatum): linked at the stop.
        self.external = ExternalData()
        # Per run, only what is not in the file yet: the points' rows, their sequence
        # rows, new sequences' hashes and texts.  What stays is one row number per
        # distinct sequence (each sequence is written once).
        self._sequence_rows: dict[str, int] = {}  # hash -> row
        self._sequence_hashes: list[str] = []  # hashes of the rows from `_sequence_written` on
        self._sequence_json: dict[int, str] = {}  # texts not in the file yet (new rows, or late texts)
        self._sequence_written = 0
        self._point_sequence: list[int] = []  # sequence rows of the points not flushed yet
        self._last_flush = time.monotonic()
        self._flushed = 0  # points the file counted at its last flush that succeeded
        self._closed = False
        self._short: str | None = None  # why the run is shorter than its RunEngine made it

    # -- the suitcase interface ---------------------------------------------------------

    @property
    def artifacts(self) -> dict[str, list[Path]]:
        return {"stream_data": [self.path]} if self.path is not None else {}

    def data_dataset(self, key: str) -> str | None:
        """The dataset holding data key ``key`` of the data stream, a row per point in point
        order (the points' own values, not JSON text); None before the data stream's
        descriptor, for keys of other streams, and for keys stored otherwise."""
        data = self._data
        if data is None or key not in data.specs:
            return None
        dtype, _, as_json = column_type(data.specs[key])
        if as_json or dtype is STR or np.dtype(dtype).kind not in "iufc":
            return None
        return f"/entry/data/{data.names[key]}"

    def __enter__(self) -> Serializer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, name: str, doc: dict[str, Any], validate: bool = False) -> tuple[str, dict[str, Any]]:
        if self._closed:
            return name, doc
        return super().__call__(name, doc, validate)

    def close(self) -> None:
        """End the file; a run without its stop document is marked "incomplete"."""
        if self.path is not None and not self._closed:
            self._closed = True
            self._finish(None, STATUS_INCOMPLETE, "the writer was closed before the run's stop document")
        self._closed = True

    def abandon(self, reason: str) -> None:
        """Close the file consistent, marked "error" with ``reason``; later documents are ignored."""
        if self.path is not None and not self._closed:
            self._closed = True
            logger.error("HDF5 file %s of run %s closed as broken: %s", self.path, self.run_uid, reason)
            self._finish(None, STATUS_ERROR, reason)
        self._closed = True

    # -- documents ------------------------------------------------------------------------

    def start(self, doc: RunStart) -> RunStart:
        self.run_uid = str(doc["uid"])
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._free_path(file_name_for(doc, self.file_prefix))
        self._lock = hold_lock(self.directory, path.name)
        self.path = path
        self._start_doc = dict(doc)
        key = doc.get(POINT_SEQUENCE_KEY_MD)
        self._hash_key = str(key) if key else None
        return doc

    def descriptor(self, doc: EventDescriptor) -> EventDescriptor:
        stream = str(doc.get("name", PRIMARY))
        self._stream_of[doc["uid"]] = stream
        self._descriptors.setdefault(stream, []).append(doc)
        self.external.add("descriptor", doc)
        # The events carry no values of external keys: they are linked, not columns.
        data_keys = internal_keys(doc["data_keys"])
        if stream == self.data_stream:
            if self._data is None:
                self._data = Columns(data_keys)
                self._open_file()
                self._create_live_layout()
                self._publish()
            elif set(data_keys) - set(self._data.specs):
                logger.warning("run %s: a later %r descriptor adds data keys; they are not written",
                               self.run_uid, stream)  # fmt: skip
        elif stream in self._others:
            self._others[stream].add_keys(data_keys)
        else:
            self._others[stream] = Columns(data_keys)
        return doc

    def stream_resource(self, doc: StreamResource) -> StreamResource:
        self.external.add("stream_resource", doc)
        return doc

    def stream_datum(self, doc: StreamDatum) -> StreamDatum:
        self.external.add("stream_datum", doc)
        return doc

    def event(self, doc: Event) -> Event:
        stream = self._stream_of[doc["descriptor"]]
        if stream == self.data_stream and self._data is not None:
            self._data.append(doc)
            digest = doc["data"].get(self._hash_key) if self._hash_key else None
            if digest is not None:
                self._point_sequence.append(self._sequence_row(text(digest)))
            if len(self._data.rows) >= self.buffer_points or time.monotonic() - self._last_flush >= self.flush_interval:
                self.flush()
            return doc
        if stream == SEQUENCES:
            digest = doc["data"].get(SEQUENCE_HASH_KEY)
            if digest is not None:
                row = self._sequence_row(text(digest))
                self._sequence_json[row] = text(doc["data"].get(SEQUENCE_JSON_KEY, ""))
        if stream == ANALYSIS or stream not in self.skip_streams:
            # Written at the stop (`write_extras`); the skipped streams' rows are not kept.
            self._others[stream].append(doc)
        return doc

    def mark_short(self, reason: str) -> None:
        """The run lacks documents its RunEngine made: its stop closes it "incomplete",
        with ``reason`` beside the stop's own, so a reader of the file is told."""
        self._short = reason

    def stop(self, doc: RunStop) -> RunStop:
        self._closed = True
        status, reason = str(doc.get("exit_status", "")), str(doc.get("reason", "") or "")
        if self._short is not None:
            status, reason = STATUS_INCOMPLETE, "; ".join(part for part in (reason, self._short) if part)
        self._finish(doc, status, reason)
        return doc

    # -- writing --------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the buffered points and make them visible to SWMR readers."""
        f = self._file
        if f is None or self._data is None or not self._data.datasets:
            return
        self._last_flush = time.monotonic()
        self._data.flush()
        entry = f["entry"]
        sequences = entry["sequences"]
        if self._point_sequence:
            index = sequences["point_sequence"]
            first = index.shape[0]
            index.resize(first + len(self._point_sequence), axis=0)
            index[first:] = np.asarray(self._point_sequence, dtype=np.int64)
            self._point_sequence = []
        self._flush_sequences(sequences)
        f.flush()
        # Counted once the rows are on disk: recovery trusts this number.
        entry["points"][()] = self._data.written
        f.flush()
        self._flushed = self._data.written

    def _flush_sequences(self, sequences: h5py.Group) -> None:
        first = self._sequence_written
        rows = first + len(self._sequence_hashes)
        hashes, texts = sequences["hash"], sequences["json"]
        if rows > first:
            hashes.resize(rows, axis=0)
            texts.resize(rows, axis=0)
            hashes[first:rows] = np.array(self._sequence_hashes, dtype=object)
            texts[first:rows] = np.array([self._sequence_json.get(r, "") for r in range(first, rows)], dtype=object)
        # Texts that came after their row was written (a point's hash before its sequence).
        for row in sorted(r for r in self._sequence_json if r < first):
            texts[row] = self._sequence_json[row]
        self._sequence_json.clear()
        self._sequence_hashes = []
        self._sequence_written = rows

    def _sequence_row(self, digest: str) -> int:
        row = self._sequence_rows.get(digest)
        if row is None:
            row = self._sequence_rows[digest] = self._sequence_written + len(self._sequence_hashes)
            self._sequence_hashes.append(digest)
        return row

    def _open_file(self) -> None:
        """Create the file with its metadata: with the data layout, just before SWMR starts.

        Until then there is no file (only its reserved name), so a writer killed before
        the first point leaves nothing half-written that SWMR readers could not open.
        """
        path, doc = self.path, self._start_doc
        assert path is not None
        assert doc is not None
        # Made under a hidden name and renamed once consistent (`_publish`): a writer
        # killed while creating the file leaves no torn file under the run's name.
        self._creating = creating_path(path)
        self._created = True
        f = h5py.File(self._creating, "x", libver=LIBVER)
        self._file = f
        entry = write_entry(f, doc, path.name)
        self._run_plugins("start", entry, doc)
        f.flush()

    def _create_live_layout(self) -> None:
        """The data stream's datasets, then SWMR: nothing new is created until the stop."""
        f = self._file
        assert f is not None
        assert self._data is not None
        assert self._start_doc is not None
        write_live_layout(f["entry"], self._data, self._start_doc, self.signal, max(16, self.buffer_points))
        f.flush()
        if self.swmr:
            f.swmr_mode = True

    def _publish(self) -> None:
        """The file under its own name, now that its layout is on disk (SWMR from here)."""
        if self._creating is not None and self.path is not None:
            os.replace(self._creating, self.path)
            self._creating = None

    def _finish(self, stop: Mapping[str, Any] | None, status: str, reason: str) -> None:
        path = self.path
        if path is None:
            return
        problems: list[str] = []
        try:
            if not self._created:  # no point came: the file is made now, without SWMR
                self._open_file()
                self._publish()
            self._end_in_open_handle(stop, status, reason, problems)
            self._publish()
            if not problems:
                self._write_extras(path, stop, problems)
            # Reported written (and acknowledged off the bus) only once it is on disk.
            make_durable(path)
        except Exception as exc:
            logger.exception("run %s: the file %s could not be finished", self.run_uid, path)
            problems.append(f"the file could not be finished: {exc}")
        finally:
            if self._creating is not None:  # made in part, never published: nothing in it
                self._creating.unlink(missing_ok=True)
                self._creating = None
            self._check(path, problems)
            # A file that was not finished cleanly (its end or its close failed) keeps its
            # lock file, released: the next recovery checks it, as if its writer had died.
            assert self.outcome is not None
            unfinished = path.exists() and (self.outcome.status in (None, STATUS_RUNNING) or bool(problems))
            release_lock(self._lock, self.directory, path.name, keep_record=unfinished)
            self._lock = None

    def _end_in_open_handle(
        self, stop: Mapping[str, Any] | None, status: str, reason: str, problems: list[str]
    ) -> None:
        """The last points and the run's outcome, in the handle that wrote the points."""
        f = self._file
        if f is None:
            return
        try:
            self.flush()
        except Exception as exc:
            logger.exception("run %s: the last points could not be written to %s", self.run_uid, self.path)
            problems.append(f"the last points could not be written: {exc}")
        try:
            # The points of the last flush that succeeded: rows still in HDF5's cache when
            # a write failed (a full disk) are not counted.
            write_stop(f["entry"], stop, status, reason, self._flushed)
            f.flush()
        except Exception as exc:
            logger.exception("run %s: the end of the run could not be written to %s", self.run_uid, self.path)
            problems.append(f"the run's end could not be written: {exc}")
        try:
            f.close()
        finally:
            self._file = None

    def _write_extras(self, path: Path, stop: Mapping[str, Any] | None, problems: list[str]) -> None:
        try:
            f = h5py.File(path, "r+", libver=LIBVER)
        except BlockingIOError:
            # A live SWMR reader's lock. The SWMR handle is closed and this process is the
            # only writer: adding groups without the lock loses nothing the reader holds.
            logger.info("run %s: a reader has %s open; its last groups are added without HDF5's lock",
                        self.run_uid, path)  # fmt: skip
            f = h5py.File(path, "r+", libver=LIBVER, locking=False)
        with f:
            entry = f["entry"]
            try:
                write_extras(entry, self._others, self.skip_streams, self._others.get(ANALYSIS), self._start_doc or {})
            except Exception as exc:
                logger.exception("run %s: the other streams and fits could not be written to %s", self.run_uid, path)
                problems.append(f"the other streams and fits could not be written: {exc}")
            try:
                self.external.write_links(entry, path)
            except Exception as exc:
                logger.exception("run %s: the detectors' files could not be linked in %s", self.run_uid, path)
                problems.append(f"the detectors' files could not be linked: {exc}")
            documents = RunDocuments(start=self._start_doc or {}, stop=stop, descriptors=self._descriptors)
            self._run_plugins("stop", entry, documents)

    def _check(self, path: Path, problems: list[str]) -> None:
        """`outcome`: the closed file read back."""
        try:
            try:
                status, points = read_status(path)
            except Exception:
                # HDF5 in this process may still hold a handle whose close failed (a
                # full disk) and refuse to open the file again: read it from another.
                status, points = read_status_elsewhere(path)
        except Exception as exc:
            problems.append(f"the file cannot be read back ({exc}); {self._flushed} points were flushed to it")
            self.outcome = FileOutcome(path, None, self._flushed, problems)
            return
        expected = self._data.written + len(self._data.rows) if self._data is not None else 0
        if points < expected and not any("points" in p for p in problems):
            problems.append(f"{expected - points} of {expected} points are not in the file")
        self.outcome = FileOutcome(path, status, points, problems)

    def _run_plugins(self, hook: str, entry: h5py.Group, argument: Any) -> None:
        for plugin in self.plugins:
            try:
                getattr(plugin, hook)(entry, argument)
            except Exception:
                logger.exception("run %s: HDF5 plugin %s failed in %s", self.run_uid, type(plugin).__name__, hook)

    def _free_path(self, name: str) -> Path:
        path = (self.directory / name).resolve()
        if path.parent != self.directory:  # cannot happen after safe_name; checked all the same
            raise ValueError(f"file name {name!r} leaves {self.directory}")
        stem, n = path.stem, 1
        while path.exists() or lock_path(self.directory, path.name).exists():
            path = self.directory / f"{stem}-{n}.h5"
            n += 1
        return path
