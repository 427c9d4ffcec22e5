"""Data kept outside the events: detectors' own files (StreamResource and StreamDatum).

A file-writing detector (ophyd-async's `StandardDetector`: area detectors,
`ophyd_async.sim.SimBlobDetector`) writes its frames to a file of its own; its data keys
say ``external: "STREAM:"``, its events carry no value for them, and the documents only
refer to the frames: a ``stream_resource`` names the file (``uri``, ``mimetype``, and for
HDF5 ``parameters["dataset"]``), each ``stream_datum`` the rows ``indices`` of it that a
run of the stream's events (``seq_nums``) recorded.

`ExternalData` follows one run's resources and the rows promised.  The run's file links
each HDF5 resource (`write_links`: an `h5py.ExternalLink`, relative when the detector's
file is at or below the run file's directory) and records the others as attributes;
`check` reads the detectors' files back at the stop (read-only, as an SWMR reader: the
detector may still have its file open) and says what is missing (ADR 0212).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import h5py

from orchestrion.schema import PRIMARY, nexus_name

HDF5_MIMETYPE = "application/x-hdf5"
EXTERNAL_GROUP = "external"
CHECK_WAIT = 5.0  # s: how long the check waits for rows a detector has not made visible yet
CHECK_POLL = 0.1


def internal_keys(data_keys: Mapping[str, Any]) -> dict[str, Any]:
    """The data keys whose values the events carry: not those ``external`` (``"STREAM:"``:
    a detector's own file, referenced by StreamResource and StreamDatum documents)."""
    return {key: spec for key, spec in data_keys.items() if not spec.get("external")}


def local_path(uri: str) -> Path | None:
    """The file a ``file:`` URI names on this machine (``file://localhost/...``, ``file:///...``), else None."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", "") or parsed.netloc not in ("", "localhost", "127.0.0.1"):
        return None
    return Path(unquote(parsed.path)) if parsed.path else None


@dataclass
class ExternalResource:
    """One StreamResource of a run and the rows its StreamDatums promised."""

    uid: str
    data_key: str
    mimetype: str
    uri: str
    parameters: dict[str, Any]
    stream: str | None = None  # the stream of its first StreamDatum's descriptor
    rows: int = 0  # the highest ``indices.stop`` promised: rows of the dataset, in units of events
    per_row: int = 1  # frames per index (the data key's leading dimension, ophyd-async's multiplier)
    datums: int = 0

    @property
    def path(self) -> Path | None:
        return local_path(self.uri)

    @property
    def dataset(self) -> str | None:
        value = self.parameters.get("dataset")
        return str(value) if value else None

    @property
    def linkable(self) -> bool:
        return self.mimetype == HDF5_MIMETYPE and self.path is not None and self.dataset is not None


@dataclass
class ExternalCheck:
    """What a detector's file holds of what its run's documents promised."""

    data_key: str
    stream: str | None
    uri: str
    promised: int  # rows along the dataset's first axis
    found: int | None  # None: not read (not HDF5, or not a local file)
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"data_key": self.data_key, "stream": self.stream, "uri": self.uri,
                "promised": self.promised, "found": self.found, "problem": self.problem}  # fmt: skip


@dataclass
class ExternalData:
    """One run's external data: its StreamResources, and the rows its StreamDatums promise.

    Fed every document of the run (`add`); keeps a few numbers per resource, whatever
    the run's length.
    """

    resources: dict[str, ExternalResource] = field(default_factory=dict)
    orphans: int = 0  # StreamDatums of no StreamResource seen: frames nobody can find
    _streams: dict[str, str] = field(default_factory=dict)  # descriptor uid -> stream name
    _shapes: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # descriptor uid -> key -> shape

    def add(self, name: str, doc: Mapping[str, Any]) -> None:
        if name == "descriptor":
            self._streams[str(doc["uid"])] = str(doc.get("name") or PRIMARY)
            shapes = {key: list(spec.get("shape") or []) for key, spec in doc["data_keys"].items()
                      if spec.get("external")}  # fmt: skip
            if shapes:
                self._shapes[str(doc["uid"])] = shapes
        elif name == "stream_resource":
            uid = str(doc["uid"])
            self.resources.setdefault(uid, ExternalResource(
                uid=uid, data_key=str(doc.get("data_key") or ""), mimetype=str(doc.get("mimetype") or ""),
                uri=str(doc.get("uri") or ""), parameters=dict(doc.get("parameters") or {}),
            ))  # fmt: skip
        elif name == "stream_datum":
            resource = self.resources.get(str(doc["stream_resource"]))
            if resource is None:
                self.orphans += 1  # reported by `check`
                return
            descriptor = str(doc.get("descriptor") or "")
            if resource.stream is None:
                resource.stream = self._streams.get(descriptor)
                shape = self._shapes.get(descriptor, {}).get(resource.data_key) or []
                if shape and isinstance(shape[0], int) and shape[0] > 0:
                    resource.per_row = int(shape[0])
            resource.datums += 1
            resource.rows = max(resource.rows, int(doc["indices"]["stop"]))

    def __bool__(self) -> bool:
        return bool(self.resources) or self.orphans > 0

    def promised(self) -> dict[str, int]:
        """Events' worth of rows promised per ``STREAM/DATA_KEY`` (what the catalog should hold)."""
        totals: dict[str, int] = {}
        for resource in self.resources.values():
            if resource.datums:
                key = f"{resource.stream or PRIMARY}/{resource.data_key}"
                totals[key] = totals.get(key, 0) + resource.rows
        return totals

    # -- the run's file -------------------------------------------------------------------

    def write_links(self, entry: h5py.Group, run_file: Path) -> None:
        """``/entry/external/KEY``: per resource an NXdata whose ``data`` is an external link
        to the detector's dataset (HDF5), or an NXcollection recording the resource."""
        if not self.resources:
            return
        group = entry.require_group(EXTERNAL_GROUP)
        group.attrs["NX_class"] = "NXcollection"
        group.attrs["description"] = "data that detectors wrote to files of their own, linked where they are"
        for resource in self.resources.values():
            base = name = nexus_name(resource.data_key or resource.uid)
            n = 1
            while name in group:
                n += 1
                name = f"{base}_{n}"
            item = group.create_group(name)
            item.attrs.update({
                "data_key": resource.data_key, "stream": resource.stream or "", "uri": resource.uri,
                "mimetype": resource.mimetype, "parameters": json.dumps(resource.parameters, default=str),
                "stream_resource": resource.uid, "rows_promised": resource.rows * resource.per_row,
            })  # fmt: skip
            path = resource.path
            if resource.linkable and path is not None and resource.dataset is not None:
                item.attrs.update({"NX_class": "NXdata", "signal": "data"})
                item["data"] = h5py.ExternalLink(link_target(path, run_file.parent), resource.dataset)
                _default_plot(entry, name, resource)
            else:
                item.attrs["NX_class"] = "NXcollection"

    # -- the check at the stop ------------------------------------------------------------

    def check(self, wait: float = CHECK_WAIT) -> list[ExternalCheck]:
        """Each resource's file read back: the rows its StreamDatums promised are there.

        Rows still short are read again for up to ``wait`` seconds: a detector in another
        process may not have flushed its last frame when the stop arrives.
        """
        results = [self._check(resource) for resource in self.resources.values() if resource.datums]
        deadline = time.monotonic() + wait
        while any(r.problem for r in results) and time.monotonic() < deadline:
            time.sleep(CHECK_POLL)
            results = [self._check(resource) for resource in self.resources.values() if resource.datums]
        if self.orphans:
            results.append(ExternalCheck("", None, "", 0, None, f"{self.orphans} stream_datum documents refer to "
                                         "no stream_resource of the run: their frames cannot be found"))  # fmt: skip
        return results

    @staticmethod
    def _check(resource: ExternalResource) -> ExternalCheck:
        promised = resource.rows * resource.per_row
        result = ExternalCheck(resource.data_key, resource.stream, resource.uri, promised, None)
        path = resource.path
        if not resource.linkable or path is None or resource.dataset is None:
            return result  # not ours to read: recorded, not checked
        if not path.is_file():
            result.problem = f"the detector file {path} of {resource.data_key} is missing ({promised} frames promised)"
            return result
        try:
            found = hdf5_rows(path, resource.dataset)
        except (OSError, KeyError, ValueError) as exc:
            result.problem = f"the detector file {path} of {resource.data_key} cannot be read: {exc}"
            return result
        result.found = found
        if found < promised:
            result.problem = (f"the detector file {path} holds {found} of {promised} frames of "
                              f"{resource.data_key} ({resource.dataset})")  # fmt: skip
        return result


def _default_plot(entry: h5py.Group, name: str, resource: ExternalResource) -> None:
    """A run whose points hold no number to plot (a camera's ``bp.count``): its default
    plot ``/entry/data`` gets the detector's frames as its signal, one frame per point."""
    data = entry.get("data")
    if not isinstance(data, h5py.Group) or "signal" in data.attrs or name in data or "seq_num" not in data:
        return
    if resource.per_row != 1 or resource.rows != data["seq_num"].shape[0]:
        return
    data[name] = entry[f"{EXTERNAL_GROUP}/{name}"].get("data", getlink=True)
    data.attrs["signal"] = name
    # One @axes entry per dimension of the signal: the point axis, then "." for the pixels.
    axes = [str(a) for a in data.attrs.get("axes", ["seq_num"])][:1] or ["seq_num"]
    data.attrs["axes"] = axes + ["."] * (data[name].ndim - 1)


def hdf5_rows(path: Path, dataset: str) -> int:
    """Rows (first axis) of ``dataset`` in ``path``, read-only, as an SWMR reader.

    A detector may still hold its file open: an SWMR writer's file opens with
    ``swmr=True``; one written without SWMR and still open refuses HDF5's lock, and is
    then read without it (its rows may not all be flushed yet).
    """
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError:
        f = h5py.File(path, "r", locking=False)
    with f:
        item = f[dataset]
        if not isinstance(item, h5py.Dataset):
            raise ValueError(f"{dataset} is no dataset")
        return int(item.shape[0]) if item.ndim else 1


def link_target(path: Path, directory: Path) -> str:
    """How the run's file names ``path``: relative when at or below ``directory``, else absolute."""
    target, base = Path(os.path.abspath(path)), Path(os.path.abspath(directory))
    try:
        return str(target.relative_to(base))
    except ValueError:
        return str(target)
