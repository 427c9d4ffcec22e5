"""The NeXus layout of a run's file: what goes where, written through h5py.

Layout (``/entry`` is an NXentry with ``definition`` NXscan, its default plot
``/entry/data`` an NXdata)::

    /entry                 title, experiment, run_uid, job_id, scan_id, start_time,
                           end_time, status, reason, points, definition
    /entry/data            NXdata: one dataset per data key of the data stream (the
                           bundled points), ``time``, ``seq_num``; signal and axes set
                           (``@axes``: the outermost scan axis; every axis of a grid
                           scan has ``AXIS_indices`` and is listed in ``@scan_axes``)
    /entry/shots           NXdata: the per-shot array (points x shots), when there is one
    /entry/sequences       hash, json (each sequence once), point_sequence (row per point)
    /entry/parameters      one NXparameters group per parameter id: value (units when
                           the run says), attributes id, timestamp, source
    /entry/analysis        NXprocess: fit results (the run's "analysis" stream)
    /entry/streams/NAME    NXcollection: the other streams (baseline, monitors)
    /entry/external/KEY    per StreamResource of a detector that writes its own file: an
                           NXdata whose ``data`` is an external link to the detector's
                           dataset (HDF5), or an NXcollection; uri, mimetype, parameters
                           as attributes (`ExternalData.write_links`, ADR 0212)
    /entry/metadata        start and stop documents as JSON

Every item name is a NeXus name (`orchestrion.schema.nexus_name`: no dots or dashes);
the original id or data key is kept in an attribute (``id``, ``data_key``, ``stream``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np

import orchestrion
from orchestrion.schema import POINT_KEY, UNITS_MD, fit_name, nexus_name

from ._hdf5_columns import Columns, column_type, plain, scalar
from ._hdf5_files import STATUS_RUNNING, STR, create_status, iso_time, write_status

DEFINITION = "NXscan"


def write_entry(f: h5py.File, start: Mapping[str, Any], file_name: str) -> h5py.Group:
    """The root's attributes and ``/entry`` with the run's metadata, status "running"."""
    f.attrs.update({
        "NX_class": "NXroot", "default": "entry", "file_name": file_name,
        "file_time": datetime.now(UTC).isoformat(), "creator": f"orchestrion {orchestrion.__version__}",
        "HDF5_Version": h5py.version.hdf5_version, "h5py_version": h5py.version.version,
    })  # fmt: skip
    entry = f.create_group("entry")
    entry.attrs.update({"NX_class": "NXentry", "default": "data"})
    experiment = str(start.get("experiment") or start.get("plan_name") or "")
    for key, value in {
        "title": experiment, "experiment": experiment, "run_uid": str(start["uid"]),
        "job_id": str(start.get("job_id") or ""), "start_time": iso_time(start.get("time")),
        "program_name": "orchestrion", "plan_name": str(start.get("plan_name") or ""),
        "definition": DEFINITION, "reason": "", "end_time": "",
    }.items():  # fmt: skip
        entry.create_dataset(key, data=value, dtype=STR)
    entry.create_dataset("scan_id", data=int(start.get("scan_id") or 0))
    create_status(entry, STATUS_RUNNING)
    entry.create_dataset("points", data=0, dtype=np.int64)
    metadata = entry.create_group("metadata")
    metadata.attrs["NX_class"] = "NXcollection"
    metadata.create_dataset("start", data=json.dumps(start, default=str), dtype=STR)
    # Written at the stop, in place: the stop must not need to create anything.
    metadata.create_dataset("stop", data="", dtype=STR)
    units = run_units(start)
    parameters = entry.create_group("parameters")
    parameters.attrs["NX_class"] = "NXcollection"
    for pid, leaf in _flatten_parameters(start.get("parameters") or {}).items():
        group = parameters.create_group(nexus_name(pid))
        group.attrs.update({"NX_class": "NXparameters", "id": pid})
        value = group.create_dataset("value", data=scalar(leaf.get("value")))
        if units.get(pid):
            value.attrs["units"] = str(units[pid])
        group.attrs["timestamp"] = str(leaf.get("timestamp", ""))
        group.attrs["source"] = str(leaf.get("source", ""))
    return entry


def write_live_layout(
    entry: h5py.Group, data: Columns, start: Mapping[str, Any], signal: str | None, chunk_rows: int
) -> None:
    """``/entry/data``, ``/entry/shots`` and ``/entry/sequences``: what grows point by point."""
    group = entry.create_group("data")
    group.attrs["NX_class"] = "NXdata"
    data.create(group, chunk_rows)
    chosen, axes = choose_signal_and_axes(data, start, signal)
    if chosen is not None:
        group.attrs["signal"] = chosen
    # A grid scan's points are one dimension: ``@axes`` names one axis per dimension
    # (the outermost scan axis), and every scan axis declares that it indexes it.
    group.attrs["axes"] = axes[:1]
    for axis in axes:
        group.attrs[f"{axis}_indices"] = 0
    group.attrs["scan_axes"] = axes
    for key, spec in data.specs.items():
        _, shape, as_json = column_type(spec)
        if len(shape) == 1 and not as_json and "shots" not in entry:
            shots = entry.create_group("shots")
            name = data.names[key]
            shots.attrs.update({"NX_class": "NXdata", "signal": name, "axes": [axes[0], "shot"], "shot_indices": 1})
            for axis in axes:
                shots.attrs[f"{axis}_indices"] = 0
                shots[axis] = group[axis]
            shots[name] = group[name]
            shots.create_dataset("shot", data=np.arange(shape[0], dtype=np.int64))
    sequences = entry.create_group("sequences")
    sequences.attrs["NX_class"] = "NXcollection"
    sequences.attrs["description"] = "each pulse sequence once, by content hash; point_sequence: row per point"
    for name in ("hash", "json"):
        sequences.create_dataset(name, (0,), maxshape=(None,), dtype=STR, chunks=(64,))
    sequences.create_dataset("point_sequence", (0,), maxshape=(None,), dtype=np.int64, chunks=(256,))


def choose_signal_and_axes(data: Columns, start: Mapping[str, Any], signal: str | None) -> tuple[str | None, list[str]]:
    """The default plot's signal dataset and its axes: the run's hinted dimensions."""
    specs, names = data.specs, data.names
    axes: list[str] = []
    for dimension in (start.get("hints") or {}).get("dimensions") or []:
        fields = dimension[0] if dimension else []
        for key in fields:
            if key in names and names[key] not in axes:
                axes.append(names[key])
    if not axes:
        axes = [names[POINT_KEY]] if POINT_KEY in names else ["seq_num"]
    if signal is not None and signal in names:
        return names[signal], axes
    for key, spec in specs.items():
        if names[key] not in axes and spec.get("dtype") in ("number", "integer") and not key.startswith("point-"):
            return names[key], axes
    return None, axes


def write_stop(entry: h5py.Group, stop: Mapping[str, Any] | None, status: str, reason: str, points: int) -> None:
    """The run's end, into datasets made at the start: possible in an SWMR handle."""
    entry["points"][()] = points
    write_status(entry["status"], status)
    entry["reason"][()] = reason
    entry["end_time"][()] = iso_time(stop.get("time") if stop else datetime.now(UTC).timestamp())
    if stop is not None:
        entry["metadata/stop"][()] = json.dumps(stop, default=str)


def write_extras(
    entry: h5py.Group,
    others: Mapping[str, Columns],
    skip_streams: set[str],
    analysis: Columns | None,
    start: Mapping[str, Any],
) -> None:
    """What has no shape before the stop: the other streams, fit results, an empty plot."""
    if "data" not in entry:  # a run without a single point still has its default plot
        data = entry.create_group("data")
        data.attrs.update({"NX_class": "NXdata", "signal": "seq_num", "axes": ["seq_num"], "seq_num_indices": 0})
        data.create_dataset("seq_num", data=np.zeros(0, dtype=np.int64))
    streams = entry.require_group("streams")
    streams.attrs["NX_class"] = "NXcollection"
    for stream, columns in others.items():
        if stream in skip_streams or not columns.rows:
            continue
        group = streams.create_group(nexus_name(stream))
        group.attrs.update({"NX_class": "NXcollection", "stream": stream})
        columns.write_all(group)
    if analysis is not None and analysis.rows:
        write_analysis(entry, analysis, run_units(start))


def write_analysis(entry: h5py.Group, analysis: Columns, units: Mapping[str, Any]) -> None:
    """The last fit of the run; units from the analysis data keys, else from the run's ``units``."""
    data = analysis.rows[-1][2]
    group = entry.create_group("analysis")
    group.attrs["NX_class"] = "NXprocess"
    group.create_dataset("program", data="orchestrion.analysis", dtype=STR)
    for key, value in data.items():
        result = fit_name(key)
        name = nexus_name(result)
        if name in group:
            continue
        item = group.create_dataset(name, data=scalar(plain(value)))
        item.attrs["data_key"] = key
        unit = analysis.specs.get(key, {}).get("units") or units.get(result.removesuffix("_err"))
        if unit:
            item.attrs["units"] = str(unit)


def run_units(start: Mapping[str, Any]) -> dict[str, str]:
    """{parameter id: unit} from the start document's ``units`` (nested by namespace)."""

    def leaves(nested: Mapping[str, Any], prefix: str) -> dict[str, str]:
        flat: dict[str, str] = {}
        for key, value in nested.items():
            if isinstance(value, Mapping):
                flat.update(leaves(value, f"{prefix}{key}."))
            else:
                flat[prefix + key] = str(value)
        return flat

    units = start.get(UNITS_MD)
    return leaves(units, "") if isinstance(units, Mapping) else {}


def _flatten_parameters(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Mapping[str, Any]]:
    flat: dict[str, Mapping[str, Any]] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping) and "value" in value:
            flat[prefix + key] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten_parameters(value, f"{prefix}{key}."))
    return flat
