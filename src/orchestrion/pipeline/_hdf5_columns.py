"""Event-model data keys as HDF5 datasets: dtypes, and the buffered rows of one stream."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from orchestrion.schema import nexus_name

from ._hdf5_files import STR

LARGE_ROW = 64 * 1024  # bytes per point from which array rows are written one by one


def column_type(spec: Mapping[str, Any]) -> tuple[Any, tuple[int, ...], bool]:
    """(HDF5 dtype, per-point shape, stored as JSON text) for an event-model data key."""
    dtype = spec.get("dtype")
    shape = tuple(spec.get("shape") or ())
    np_name = spec.get("dtype_numpy")
    kind = np.dtype(np_name).kind if isinstance(np_name, str) and np_name else ""
    if dtype == "array" and (not shape or any(n is None for n in shape)):
        return STR, (), True  # ragged: one JSON text per point
    if dtype == "string" or kind in ("U", "S", "O"):
        return STR, tuple(int(n) for n in shape) if dtype == "array" else (), False
    if dtype == "boolean" or kind == "b":
        return np.bool_, tuple(int(n) for n in shape) if dtype == "array" else (), False
    if dtype == "integer":
        return np.int64, (), False
    if dtype == "number":
        return np.float64, (), False
    if dtype == "array":
        return (np.dtype(np_name) if kind else np.float64), tuple(int(n) for n in shape), False
    return STR, (), True


def plain(value: Any) -> Any:
    """``value`` as a JSON-able Python value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def scalar(value: Any) -> Any:
    """A value HDF5 stores as it is (numbers, text); anything else as JSON text."""
    if isinstance(value, bool | int | float | np.generic):
        return value
    return json.dumps(value) if not isinstance(value, str) else value


class Columns:
    """The buffered rows of one stream and the datasets they go to.

    Dataset names are NeXus names (`orchestrion.schema.nexus_name`); each dataset keeps
    its event-model data key in the ``data_key`` attribute.
    """

    def __init__(self, data_keys: Mapping[str, Mapping[str, Any]]) -> None:
        self.specs: dict[str, Mapping[str, Any]] = {}
        self.names: dict[str, str] = {}
        self._taken = {"time", "seq_num"}
        self.add_keys(data_keys)
        self.rows: list[tuple[float, int, Mapping[str, Any]]] = []
        self.written = 0
        self.datasets: dict[str, h5py.Dataset] = {}

    def add_keys(self, data_keys: Mapping[str, Mapping[str, Any]]) -> None:
        for key, spec in data_keys.items():
            if key in self.specs:
                continue
            name = nexus_name(key)
            while name in self._taken:
                name += "_"
            self._taken.add(name)
            self.specs[key] = spec
            self.names[key] = name

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
            dtype, shape, _ = column_type(spec)
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
            dtype, shape, as_json = column_type(spec)
            if not as_json and dtype is not STR and math.prod(shape) * np.dtype(dtype).itemsize >= LARGE_ROW:
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
        dtype, shape, as_json = column_type(spec)
        if as_json:
            return np.array([json.dumps(plain(r.get(key))) for r in rows], dtype=object)
        if dtype is STR:
            return np.array([text(r.get(key, "")) for r in rows], dtype=object).reshape((len(rows), *shape))
        values = [r.get(key) for r in rows]
        if any(v is None for v in values):
            fill: Any = math.nan if np.dtype(dtype).kind == "f" else 0
            values = [np.full(shape, fill) if v is None else v for v in values]
        return np.asarray(values, dtype=dtype).reshape((len(rows), *shape))

    def write_all(self, group: h5py.Group) -> None:
        """Create the datasets with every row at once (streams written at the stop)."""
        self.create(group, max(1, min(1024, len(self.rows) or 1)))
        self.flush()
