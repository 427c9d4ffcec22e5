"""One NeXus-style HDF5 file per run, written point by point and readable while written.

Layout (``/entry`` is an NXentry, its default plot ``/entry/data`` an NXdata)::

    /entry                 title, experiment, run_uid, job_id, scan_id, start_time,
                           end_time, status, reason, points
    /entry/data            NXdata: one dataset per data key of the data stream (the
                           bundled points), ``time``, ``seq_num``; signal and axes set
    /entry/shots           NXdata: the per-shot array (points x shots), when there is one
    /entry/sequences       hash, json (each sequence once), point_sequence (row per point)
    /entry/parameters      one group per parameter id: value, attributes timestamp, source
    /entry/analysis        fit results (the run's "analysis" stream)
    /entry/streams/NAME    the other streams (baseline, monitors), written at the stop
    /entry/metadata        start and stop documents as JSON

The file's name is reserved at the start document; the file is created, with the
data stream's datasets, when that stream's descriptor arrives, and at once switched to
SWMR so other processes can read it (``h5py.File(path, "r", swmr=True)``).  Points are buffered and written every
``buffer_points`` points or ``flush_interval`` seconds.  At the stop document the file
is reopened without SWMR to add what has no fixed shape in advance (other streams,
fits, the stop document); ``status`` then holds the run's exit status.  A writer that
dies leaves ``status`` at "running": `recover_incomplete` marks such files.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import h5py
import numpy as np
from event_model import unpack_event_page

import orchestrion
from orchestrion.schema import ANALYSIS, POINT_KEY, PRIMARY, SEQUENCE_HASH_KEY, SEQUENCE_JSON_KEY, SEQUENCES, fit_name

from ._checks import DocumentChecker, DocumentError

logger = logging.getLogger(__name__)

DEFAULT_FILE_PREFIX = "{date}_scan{scan_id}_{experiment}_{uid8}"
PLUGIN_GROUP = "orchestrion.hdf5_plugins"
POINT_SEQUENCE_KEY = "sequencer-sequence_hash"  # FIXME(issue 10): the run names it (schema.POINT_SEQUENCE_KEY_MD)
LOCK_DIR = ".writing"
STATUS_RUNNING = "running"
STATUS_ERROR = "error"
STATUS_INCOMPLETE = "incomplete"

_STATUS_DTYPE = "S32"
_LARGE_ROW = 64 * 1024  # bytes per point from which array rows are written one by one
_STR = h5py.string_dtype()


@dataclass
class RunDocuments:
    """What a plugin's stop hook sees of the run."""

    start: Mapping[str, Any]
    stop: Mapping[str, Any] | None
    descriptors: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)


@runtime_checkable
class Hdf5Plugin(Protocol):
    """Extends the file layout; registered in the entry-point group ``orchestrion.hdf5_plugins``.

    The entry point names a class (or any callable) that takes no argument.  ``start``
    runs when the file is created, ``stop`` when the run ends (also for failed runs);
    both get the ``/entry`` group.  An exception in a plugin is logged; the file goes on.
    """

    def start(self, entry: h5py.Group, start: Mapping[str, Any]) -> None: ...

    def stop(self, entry: h5py.Group, run: RunDocuments) -> None: ...


@functools.cache
def _plugin_factories() -> tuple[tuple[str, Callable[[], Hdf5Plugin]], ...]:
    # Once per process: scanning the installed distributions' entry points took about
    # 10 ms, at every run's start.
    factories = []
    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        try:
            factories.append((point.name, point.load()))
        except Exception:
            logger.exception("HDF5 plugin %r could not be loaded; it is skipped", point.name)
    return tuple(factories)


def load_plugins() -> list[Hdf5Plugin]:
    """Fresh instances of the plugins in the ``orchestrion.hdf5_plugins`` entry-point group."""
    plugins: list[Hdf5Plugin] = []
    for name, factory in _plugin_factories():
        try:
            plugins.append(factory())
        except Exception:
            logger.exception("HDF5 plugin %r could not be made; it is skipped", name)
    return plugins


class InstrumentPlugin:
    """Writes ``/entry/instrument``: one group per device with its data keys' source and units."""

    def start(self, entry: h5py.Group, start: Mapping[str, Any]) -> None:
        return None

    def stop(self, entry: h5py.Group, run: RunDocuments) -> None:
        instrument = entry.require_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        for stream, descriptors in run.descriptors.items():
            for descriptor in descriptors:
                for obj, keys in (descriptor.get("object_keys") or {}).items():
                    device = instrument.require_group(safe_name(obj))
                    device.attrs["NX_class"] = "NXcollection"
                    for key in keys:
                        spec = descriptor["data_keys"].get(key, {})
                        name = safe_name(key)
                        if name in device:
                            continue
                        item = device.create_dataset(name, data=str(spec.get("source", "")), dtype=_STR)
                        item.attrs["stream"] = stream
                        if spec.get("units"):
                            item.attrs["units"] = str(spec["units"])


def safe_name(text: str) -> str:
    """``text`` as a name for a file or an HDF5 object: letters, digits, ``._-`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-")
    return cleaned or "unnamed"


def _dataset_name(key: str) -> str:
    return safe_name(key).replace("-", "_").replace(".", "_")


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


def _iso(timestamp: float | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def _column_type(spec: Mapping[str, Any]) -> tuple[Any, tuple[int, ...], bool]:
    """(HDF5 dtype, per-point shape, stored as JSON text) for an event-model data key."""
    dtype = spec.get("dtype")
    shape = tuple(spec.get("shape") or ())
    np_name = spec.get("dtype_numpy")
    kind = np.dtype(np_name).kind if isinstance(np_name, str) and np_name else ""
    if dtype == "array" and (not shape or any(n is None for n in shape)):
        return _STR, (), True  # ragged: one JSON text per point
    if dtype == "string" or kind in ("U", "S", "O"):
        return _STR, tuple(int(n) for n in shape) if dtype == "array" else (), False
    if dtype == "boolean" or kind == "b":
        return np.bool_, tuple(int(n) for n in shape) if dtype == "array" else (), False
    if dtype == "integer":
        return np.int64, (), False
    if dtype == "number":
        return np.float64, (), False
    if dtype == "array":
        return (np.dtype(np_name) if kind else np.float64), tuple(int(n) for n in shape), False
    return _STR, (), True


class _Columns:
    """The buffered rows of one stream and the datasets they go to."""

    def __init__(self, data_keys: Mapping[str, Mapping[str, Any]]) -> None:
        self.specs = dict(data_keys)
        self.names: dict[str, str] = {}
        taken = {"time", "seq_num"}
        for key in self.specs:
            name = _dataset_name(key)
            while name in taken:
                name += "_"
            taken.add(name)
            self.names[key] = name
        self.rows: list[tuple[float, int, Mapping[str, Any]]] = []
        self.written = 0
        self.datasets: dict[str, h5py.Dataset] = {}

    def add_keys(self, data_keys: Mapping[str, Mapping[str, Any]]) -> None:
        for key, spec in data_keys.items():
            if key not in self.specs:
                self.specs[key] = spec
                self.names[key] = _dataset_name(key)

    def append(self, event: Mapping[str, Any]) -> None:
        self.rows.append((float(event["time"]), int(event["seq_num"]), event["data"]))

    def create(self, group: h5py.Group, chunk_rows: int) -> None:
        """Empty, growable datasets (created before SWMR starts)."""
        self.datasets["time"] = group.create_dataset(
            "time", (0,), maxshape=(None,), dtype=np.float64, chunks=(chunk_rows,)
        )
        self.datasets["time"].attrs["units"] = "s"
        self.datasets["seq_num"] = group.create_dataset(
            "seq_num", (0,), maxshape=(None,), dtype=np.int64, chunks=(chunk_rows,)
        )
        for key, spec in self.specs.items():
            dtype, shape, _ = _column_type(spec)
            dataset = group.create_dataset(
                self.names[key], (0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(max(1, min(chunk_rows, (1 << 20) // max(1, 8 * math.prod(shape)))), *shape),
            )  # fmt: skip
            dataset.attrs["data_key"] = key
            if spec.get("units"):
                dataset.attrs["units"] = str(spec["units"])
            if spec.get("source"):
                dataset.attrs["source"] = str(spec["source"])
            self.datasets[key] = dataset

    def flush(self) -> int:
        """Write the buffered rows to the datasets; the number of rows written."""
        pending = self.rows
        if not pending:
            return 0
        first, last = self.written, self.written + len(pending)
        self._write("time", first, last, np.array([r[0] for r in pending], dtype=np.float64))
        self._write("seq_num", first, last, np.array([r[1] for r in pending], dtype=np.int64))
        for key, spec in self.specs.items():
            dtype, shape, as_json = _column_type(spec)
            if not as_json and dtype is not _STR and math.prod(shape) * np.dtype(dtype).itemsize >= _LARGE_ROW:
                self._write_rows(key, first, [r[2].get(key) for r in pending], dtype, shape)
            else:
                self._write(key, first, last, self._values(key, spec, [r[2] for r in pending]))
        self.written = last
        self.rows = []  # rows on disk are not kept in memory
        return len(pending)

    def _write_rows(self, key: str, first: int, values: list[Any], dtype: Any, shape: tuple[int, ...]) -> None:
        # Large rows (images, traces) go one by one, straight from the event's array:
        # stacking a buffer of them first would copy every byte once more.
        dataset = self.datasets[key]
        dataset.resize(first + len(values), axis=0)
        for offset, value in enumerate(values):
            row = np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0) if value is None else value
            dataset[first + offset] = np.asarray(row, dtype=dtype).reshape(shape)

    def _write(self, key: str, first: int, last: int, values: Any) -> None:
        dataset = self.datasets[key]
        dataset.resize(last, axis=0)
        dataset[first:last] = values

    def _values(self, key: str, spec: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Any:
        dtype, shape, as_json = _column_type(spec)
        if as_json:
            return np.array([json.dumps(_plain(r.get(key))) for r in rows], dtype=object)
        if dtype is _STR:
            return np.array([_text(r.get(key, "")) for r in rows], dtype=object).reshape((len(rows), *shape))
        values = [r.get(key) for r in rows]
        if any(v is None for v in values):
            fill: Any = math.nan if np.dtype(dtype).kind == "f" else 0
            values = [np.full(shape, fill) if v is None else v for v in values]
        return np.asarray(values, dtype=dtype).reshape((len(rows), *shape))

    def write_all(self, group: h5py.Group) -> None:
        """Create the datasets with every row at once (streams written at the stop)."""
        self.create(group, max(1, min(1024, len(self.rows) or 1)))
        self.flush()


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _flatten_parameters(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Mapping[str, Any]]:
    flat: dict[str, Mapping[str, Any]] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping) and "value" in value:
            flat[prefix + key] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten_parameters(value, f"{prefix}{key}."))
    return flat


def _scalar(value: Any) -> Any:
    if isinstance(value, bool | int | float | np.generic):
        return value
    return json.dumps(value) if not isinstance(value, str) else value


class Serializer:
    """Writes the documents of one run to one HDF5 file (the suitcase serializer interface).

    ``Serializer(directory, file_prefix=...)`` is a callable ``(name, doc)``; the file's
    name (under ``directory``, from ``file_prefix``, see `file_name_for`) is fixed at the
    start document, the file created with the data stream's layout.  ``data_stream`` is
    the stream that becomes ``/entry/data``; ``skip_streams`` are not copied to
    ``/entry/streams``.  ``artifacts`` lists the file written; `close` ends the file
    (as "incomplete" if the stop document never came).
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
        self._checker = DocumentChecker()
        self._file: h5py.File | None = None
        self._creating: Path | None = None  # the file while it is made, before `_publish`
        self._lock: IO[bytes] | None = None
        self._start_doc: dict[str, Any] | None = None
        self._stream_of: dict[str, str] = {}
        self._descriptors: dict[str, list[Mapping[str, Any]]] = {}
        self._data: _Columns | None = None
        self._others: dict[str, _Columns] = {}
        self._sequence_rows: dict[str, int] = {}
        self._sequence_json: list[str] = []
        self._sequence_written = 0
        self._sequence_dirty: set[int] = set()
        self._point_sequence: list[int] = []
        self._last_flush = time.monotonic()
        self._closed = False

    # -- the suitcase interface ---------------------------------------------------------

    @property
    def artifacts(self) -> dict[str, list[Path]]:
        return {"stream_data": [self.path]} if self.path is not None else {}

    def __enter__(self) -> Serializer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, name: str, doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if self._closed:
            return name, doc
        try:
            self._checker.check(name, doc)
        except DocumentError as exc:
            if not exc.reported:
                logger.error("HDF5 writer: %s", exc)
            if self.path is not None:
                self.abandon(str(exc))
            return name, doc
        handler = getattr(self, "_on_" + name, None)
        if handler is not None:
            handler(doc)
        return name, doc

    def close(self) -> None:
        """End the file; a run without its stop document is marked "incomplete"."""
        if self.path is not None and not self._closed:
            self._finish(None, STATUS_INCOMPLETE, "the writer was closed before the run's stop document")
        self._closed = True

    def abandon(self, reason: str) -> None:
        """Close the file consistent, marked "error" with ``reason``; later documents are ignored."""
        if self.path is not None and not self._closed:
            logger.error("HDF5 file %s of run %s closed as broken: %s", self.path, self.run_uid, reason)
            self._finish(None, STATUS_ERROR, reason)
        self._closed = True

    # -- documents ------------------------------------------------------------------------

    def _on_start(self, doc: dict[str, Any]) -> None:
        self.run_uid = str(doc["uid"])
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._free_path(file_name_for(doc, self.file_prefix))
        self._lock = _hold_lock(self.directory, path.name)
        self.path = path
        self._start_doc = doc

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
        f = h5py.File(self._creating, "x", libver="latest")
        self._file = f
        f.attrs.update({
            "NX_class": "NXroot", "default": "entry", "file_name": path.name,
            "file_time": datetime.now(UTC).isoformat(), "creator": f"orchestrion {orchestrion.__version__}",
            "HDF5_Version": h5py.version.hdf5_version, "h5py_version": h5py.version.version,
        })  # fmt: skip
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        experiment = str(doc.get("experiment") or doc.get("plan_name") or "")
        for key, value in {
            "title": experiment, "experiment": experiment, "run_uid": self.run_uid,
            "job_id": str(doc.get("job_id") or ""), "start_time": _iso(doc.get("time")),
            "program_name": "orchestrion", "plan_name": str(doc.get("plan_name") or ""),
        }.items():  # fmt: skip
            entry.create_dataset(key, data=value, dtype=_STR)
        entry.create_dataset("scan_id", data=int(doc.get("scan_id") or 0))
        entry.create_dataset("status", data=STATUS_RUNNING, dtype=_STATUS_DTYPE)
        entry.create_dataset("points", data=0, dtype=np.int64)
        metadata = entry.create_group("metadata")
        metadata.attrs["NX_class"] = "NXcollection"
        metadata.create_dataset("start", data=json.dumps(doc, default=str), dtype=_STR)
        parameters = entry.create_group("parameters")
        parameters.attrs["NX_class"] = "NXcollection"
        for pid, leaf in _flatten_parameters(doc.get("parameters") or {}).items():
            group = parameters.create_group(pid.replace("/", "_"))
            group.create_dataset("value", data=_scalar(leaf.get("value")))
            group.attrs["timestamp"] = str(leaf.get("timestamp", ""))
            group.attrs["source"] = str(leaf.get("source", ""))
        self._run_plugins("start", entry, doc)
        f.flush()

    def _on_descriptor(self, doc: dict[str, Any]) -> None:
        stream = str(doc.get("name", PRIMARY))
        self._stream_of[doc["uid"]] = stream
        self._descriptors.setdefault(stream, []).append(doc)
        if stream == self.data_stream:
            if self._data is None:
                self._data = _Columns(doc["data_keys"])
                self._open_file()
                self._create_live_layout()
                self._publish()
            elif set(doc["data_keys"]) - set(self._data.specs):
                logger.warning("run %s: a later %r descriptor adds data keys; they are not written",
                               self.run_uid, stream)  # fmt: skip
        elif stream in self._others:
            self._others[stream].add_keys(doc["data_keys"])
        else:
            self._others[stream] = _Columns(doc["data_keys"])

    def _on_event(self, doc: Mapping[str, Any]) -> None:
        stream = self._stream_of[doc["descriptor"]]
        if stream == self.data_stream and self._data is not None:
            self._data.append(doc)
            digest = doc["data"].get(POINT_SEQUENCE_KEY)
            if digest is not None:
                self._point_sequence.append(self._sequence_row(_text(digest)))
            if len(self._data.rows) >= self.buffer_points or time.monotonic() - self._last_flush >= self.flush_interval:
                self.flush()
            return
        if stream == SEQUENCES:
            digest = doc["data"].get(SEQUENCE_HASH_KEY)
            if digest is not None:
                row = self._sequence_row(_text(digest))
                self._sequence_json[row] = _text(doc["data"].get(SEQUENCE_JSON_KEY, ""))
                self._sequence_dirty.add(row)
        self._others[stream].append(doc)

    def _on_event_page(self, doc: dict[str, Any]) -> None:
        for event in unpack_event_page(doc):  # type: ignore[arg-type]
            self._on_event(event)

    def _on_stop(self, doc: dict[str, Any]) -> None:
        self._finish(doc, str(doc.get("exit_status", "")), str(doc.get("reason", "") or ""))
        self._closed = True

    # -- writing --------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the buffered points and make them visible to SWMR readers."""
        f = self._file
        if f is None or self._data is None or not self._data.datasets:
            return
        self._data.flush()
        entry = f["entry"]
        sequences = entry["sequences"]
        if self._point_sequence:
            index = sequences["point_sequence"]
            first = index.shape[0]
            if len(self._point_sequence) > first:
                index.resize(len(self._point_sequence), axis=0)
                index[first:] = np.asarray(self._point_sequence[first:], dtype=np.int64)
        self._flush_sequences(sequences)
        entry["points"][()] = self._data.written
        f.flush()
        self._last_flush = time.monotonic()

    def _flush_sequences(self, sequences: h5py.Group) -> None:
        rows = len(self._sequence_json)
        hashes, texts = sequences["hash"], sequences["json"]
        if rows > self._sequence_written:
            hashes.resize(rows, axis=0)
            texts.resize(rows, axis=0)
            order = sorted(self._sequence_rows.items(), key=lambda item: item[1])
            first = self._sequence_written
            hashes[first:rows] = np.array([h for h, _ in order[first:rows]], dtype=object)
            texts[first:rows] = np.array(self._sequence_json[first:rows], dtype=object)
        for row in sorted(r for r in self._sequence_dirty if r < self._sequence_written):
            texts[row] = self._sequence_json[row]
        self._sequence_dirty.clear()
        self._sequence_written = rows

    def _sequence_row(self, digest: str) -> int:
        row = self._sequence_rows.get(digest)
        if row is None:
            row = self._sequence_rows[digest] = len(self._sequence_json)
            self._sequence_json.append("")
        return row

    def _create_live_layout(self) -> None:
        """The data stream's datasets, then SWMR: nothing new is created until the stop."""
        f = self._file
        assert f is not None
        assert self._data is not None
        entry = f["entry"]
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        self._data.create(data, max(16, self.buffer_points))
        signal, axis = self._choose_signal_and_axis()
        if signal is not None:
            data.attrs["signal"] = signal
        data.attrs["axes"] = [axis]
        data.attrs[f"{axis}_indices"] = 0
        for key, spec in self._data.specs.items():
            _, shape, as_json = _column_type(spec)
            if len(shape) == 1 and not as_json and "shots" not in entry:
                shots = entry.create_group("shots")
                shots.attrs.update({"NX_class": "NXdata", "signal": self._data.names[key],
                                    "axes": [axis, "shot"], f"{axis}_indices": 0, "shot_indices": 1})  # fmt: skip
                shots[self._data.names[key]] = data[self._data.names[key]]
                shots[axis] = data[axis]
                shots.create_dataset("shot", data=np.arange(shape[0], dtype=np.int64))
        sequences = entry.create_group("sequences")
        sequences.attrs["NX_class"] = "NXcollection"
        sequences.attrs["description"] = "each pulse sequence once, by content hash; point_sequence: row per point"
        for name in ("hash", "json"):
            sequences.create_dataset(name, (0,), maxshape=(None,), dtype=_STR, chunks=(64,))
        sequences.create_dataset("point_sequence", (0,), maxshape=(None,), dtype=np.int64, chunks=(256,))
        f.flush()
        if self.swmr:
            f.swmr_mode = True

    def _publish(self) -> None:
        """The file under its own name, now that its layout is on disk (SWMR from here)."""
        if self._creating is not None and self.path is not None:
            os.replace(self._creating, self.path)
            self._creating = None

    def _choose_signal_and_axis(self) -> tuple[str | None, str]:
        assert self._data is not None
        assert self._start_doc is not None
        specs, names = self._data.specs, self._data.names
        axis = "seq_num"
        for dimension in (self._start_doc.get("hints") or {}).get("dimensions") or []:
            fields = dimension[0] if dimension else []
            if fields and fields[0] in names:
                axis = names[fields[0]]
                break
        else:
            if POINT_KEY in names:
                axis = names[POINT_KEY]
        if self.signal is not None and self.signal in names:
            return names[self.signal], axis
        for key, spec in specs.items():
            if names[key] != axis and spec.get("dtype") in ("number", "integer") and not key.startswith("point-"):
                return names[key], axis
        return None, axis

    def _finish(self, stop: Mapping[str, Any] | None, status: str, reason: str) -> None:
        if self.path is None:
            return
        if self._file is None:
            self._open_file()
        f, path = self._file, self.path
        assert f is not None
        try:
            self.flush()
        except Exception:
            logger.exception("run %s: the last points could not be flushed to %s", self.run_uid, path)
        f.close()
        self._file = None
        self._publish()
        try:
            with h5py.File(path, "r+", libver="latest") as f:
                self._write_final(f["entry"], stop, status, reason)
        finally:
            _release_lock(self._lock, self.directory, path.name)
            self._lock = None

    def _write_final(self, entry: h5py.Group, stop: Mapping[str, Any] | None, status: str, reason: str) -> None:
        entry["status"][()] = status.encode()[:32]
        entry.create_dataset("reason", data=reason, dtype=_STR)
        entry.create_dataset("end_time", data=_iso(stop.get("time") if stop else time.time()), dtype=_STR)
        if stop is not None:
            entry["metadata"].create_dataset("stop", data=json.dumps(stop, default=str), dtype=_STR)
        if "data" not in entry:  # a run without a single point still has its default plot
            data = entry.create_group("data")
            data.attrs.update({"NX_class": "NXdata", "axes": ["seq_num"], "seq_num_indices": 0})
            data.create_dataset("seq_num", data=np.zeros(0, dtype=np.int64))
        streams = entry.create_group("streams")
        streams.attrs["NX_class"] = "NXcollection"
        for stream, columns in self._others.items():
            if stream in self.skip_streams or not columns.rows:
                continue
            group = streams.create_group(safe_name(stream))
            group.attrs.update({"NX_class": "NXcollection", "stream": stream})
            columns.write_all(group)
        analysis = self._others.get(ANALYSIS)
        if analysis is not None and analysis.rows:
            group = entry.create_group("analysis")
            group.attrs["NX_class"] = "NXprocess"
            group.create_dataset("program", data="orchestrion.analysis", dtype=_STR)
            for key, value in analysis.rows[-1][2].items():
                name = _dataset_name(fit_name(key))
                if name not in group:
                    group.create_dataset(name, data=_scalar(_plain(value)))
        documents = RunDocuments(start=self._start_doc or {}, stop=stop, descriptors=self._descriptors)
        self._run_plugins("stop", entry, documents)

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
        while path.exists() or _lock_path(self.directory, path.name).exists():
            path = self.directory / f"{stem}-{n}.h5"
            n += 1
        return path


def creating_path(path: Path) -> Path:
    """Where the file at ``path`` is made, hidden, until its layout is on disk."""
    return path.with_name(f".{path.name}.creating")


def _lock_path(directory: Path, file_name: str) -> Path:
    return directory / LOCK_DIR / (file_name + ".lock")


def _hold_lock(directory: Path, file_name: str) -> IO[bytes]:
    """A lock the writer holds while the file is open: `recover_incomplete` skips live files."""
    path = _lock_path(directory, file_name)
    path.parent.mkdir(exist_ok=True)
    handle = open(path, "wb")  # noqa: SIM115 - held for the file's lifetime
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _release_lock(handle: IO[bytes] | None, directory: Path, file_name: str) -> None:
    if handle is None:
        return
    _lock_path(directory, file_name).unlink(missing_ok=True)
    handle.close()


class Hdf5Writer:
    """One `Serializer` per run, for a stream of documents from any number of runs.

    A document that breaks the event model is logged with its run uid; that run's file
    is closed consistent with status "error"; other runs go on.  So does an error while
    writing one run's file.  ``on_file(run_uid, path)`` is called when a file is created.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        on_file: Callable[[str, Path], Any] | None = None,
        **serializer_options: Any,
    ) -> None:
        self.directory = Path(directory)
        self.on_file = on_file
        self.options = serializer_options
        self._checker = DocumentChecker()
        self._serializers: dict[str, Serializer] = {}
        self.files: dict[str, Path] = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            run_uid = self._checker.check(name, doc)
        except DocumentError as exc:
            if not exc.reported:
                logger.error("HDF5 writer: %s", exc)
            if exc.run_uid is not None:
                self._checker.mark_broken(exc.run_uid)
                broken = self._serializers.pop(exc.run_uid, None)
                if broken is not None:
                    broken.abandon(str(exc))
            return
        if run_uid is None:
            return
        if name == "start":
            serializer = Serializer(self.directory, **self.options)
            self._serializers[run_uid] = serializer
        serializer = self._serializers.get(run_uid)  # type: ignore[assignment]
        if serializer is None:
            return
        try:
            serializer(name, doc)
        except Exception as exc:
            logger.exception("HDF5 writer: run %s: %s failed", run_uid, name)
            self._checker.mark_broken(run_uid)
            del self._serializers[run_uid]
            try:
                serializer.abandon(f"writer error at a {name} document: {exc}")
            except Exception:
                logger.exception("HDF5 writer: run %s: the file could not be closed", run_uid)
            return
        if name == "start" and serializer.path is not None:
            self.files[run_uid] = serializer.path
            if self.on_file is not None:
                self.on_file(run_uid, serializer.path)
        if name == "stop":
            self._checker.forget(run_uid)
            del self._serializers[run_uid]

    @property
    def artifacts(self) -> dict[str, list[Path]]:
        return {"stream_data": list(self.files.values())}

    def close(self) -> None:
        """Close every open file (marked "incomplete": their runs did not stop)."""
        for serializer in self._serializers.values():
            serializer.close()
        self._serializers.clear()
