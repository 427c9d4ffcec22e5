"""Every run into a Tiled catalog, through bluesky-tiled-plugins' TiledWriter.

Embedded (no ``tiled_uri`` configured): a persistent catalog under
``$ORCHESTRION_HOME/tiled`` (``catalog.db``, file storage ``data/`` and SQL table
storage ``tables.db``: TiledWriter needs the SQL storage for event tables), served
in-process.  Services: the Tiled server at ``tiled_uri`` with ``tiled_api_key``.

Besides what TiledWriter stores (the start and stop documents as metadata, each stream
as a table), each run's metadata gets ``orchestrion: {hdf5: PATH, analysis: {fits}}``
(the path from its start on, the fits at its stop, when the run made any), so its HDF5
file is reachable from its catalog entry, and the search keys (`SEARCH_KEYS`) at its
top level.  The run's exit status is the stop document's (``stop.exit_status``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import sqlite3
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrion.config import OrchestrionConfig, detectors_dir
from orchestrion.schema import ANALYSIS, CATALOG_MD, EXPERIMENT_MD, JOB_ID_KEY, fit_name

from ._tiled_app import StreamClosesAnswered, keep_response_models, resolve_dependency_overrides

logger = logging.getLogger(__name__)

SEARCH_KEYS = (EXPERIMENT_MD, JOB_ID_KEY, "scan_id", "plan_name")
"""Start-document keys copied to the top of a run's catalog metadata (TiledWriter keeps
them under ``start``), where a plain Tiled client's ``Key(...)`` finds them."""


def run_address(config: OrchestrionConfig, run_uid: str) -> str:
    """Where a run is in the configured catalog (see `CatalogConnection.run_address`)."""
    if config.tiled_uri:
        return f"{config.tiled_uri.rstrip('/')}/api/v1/metadata/{run_uid}"
    return f"sqlite:///{embedded_catalog_paths(config.home)['catalog']}#/{run_uid}"


def how_to_open(address: str) -> str | None:
    """How a user opens the run at ``address`` (an embedded catalog's URI is no client's URL)."""
    if not address.startswith("sqlite:///") or "#/" not in address:
        return None
    database, run_uid = address.removeprefix("sqlite:///").split("#/", 1)
    home = Path(database).parent.parent
    return (
        f'orchestrion shell, then catalog["{run_uid}"]; in Python: '
        f'orchestrion.pipeline.open_embedded_catalog(Path("{home}")).client["{run_uid}"]; '
        f"or serve it: tiled serve catalog {database} -w {home / 'tiled' / 'data'} "
        f"-w sqlite:///{home / 'tiled' / 'tables.db'} -r {home / 'data'}"
    )


@dataclass
class CatalogConnection:
    """A Tiled client and how to name a run in it."""

    client: Any
    location: str  # the catalog: a URI
    served: bool
    _context: Any = None

    def run_address(self, run_uid: str) -> str:
        """A served run's metadata URL, or the embedded catalog's URI with the node path."""
        if self.served:
            return f"{self.location.rstrip('/')}/api/v1/metadata/{run_uid}"
        return f"{self.location}#/{run_uid}"

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None


def embedded_catalog_paths(home: Path) -> dict[str, Path]:
    root = home / "tiled"
    # The same layout `orchestrion up` serves, so either way finds the same runs.
    return {"root": root, "catalog": root / "catalog.db", "files": root / "data", "tables": root / "tables.db"}


def connect_catalog(config: OrchestrionConfig) -> CatalogConnection:
    """The configured Tiled server, or the embedded persistent catalog under the home."""
    from tiled.client import from_uri

    if config.tiled_uri:
        api_key = config.tiled_api_key.get_secret_value() if config.tiled_api_key else None
        client = from_uri(config.tiled_uri, api_key=api_key)
        return CatalogConnection(client=client, location=config.tiled_uri, served=True, _context=client.context)
    return open_embedded_catalog(config.home, config.detector_data_dir)


def open_embedded_catalog(home: Path, detector_data_dir: Path | None = None) -> CatalogConnection:
    """A persistent catalog under ``home/tiled``, served in this process.

    The runs' HDF5 files (``home/data``) and the detectors' directory (``detector_data_dir``,
    see `OrchestrionConfig.detector_data_dir`) are readable storage: the points' large
    arrays (`FileArrays`) and the frames that file-writing detectors write are the
    catalog's external assets, read where they are (Tiled refuses a ``file:`` asset
    outside it).
    """
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    paths = embedded_catalog_paths(home)
    paths["files"].mkdir(parents=True, exist_ok=True)
    detectors = detectors_dir(home, detector_data_dir)
    detectors.mkdir(parents=True, exist_ok=True)
    catalog_uri = f"sqlite:///{paths['catalog']}"
    # One process at a time: two that open a new catalog together both create its
    # tables, and the second fails ("table nodes_closure already exists").
    with open(paths["root"] / ".open.lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        adapter = catalog_from_uri(
            catalog_uri,
            writable_storage=[str(paths["files"]), f"sqlite:///{paths['tables']}"],
            readable_storage=readable_storage(home / "data", detectors),
            # Tiled checks and initialises a catalog in a child interpreter of its own
            # (seconds of imports, at every open): only for one not yet at its revision.
            init_if_not_exists=not _catalog_is_current(paths["catalog"]),
        )
    # An in-process app is no server: its start-up banner ("Tiled version ...") is noise
    # on a user's terminal, and so is starlette's deprecation of the test client that
    # tiled 0.2.20 uses to talk to it in-process.
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)
    app: Any = build_app(adapter)
    resolve_dependency_overrides(app)
    keep_response_models()
    if not (adapter.context.cache_config or adapter.context.webhook_secret_keys):
        app = StreamClosesAnswered(app)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
        context = Context.from_app(app)
    client = from_context(context)
    return CatalogConnection(client=client, location=catalog_uri, served=False, _context=context)


def readable_storage(data_dir: Path, detectors: Path) -> list[str]:
    """The directories a catalog reads assets from: the runs' files and the detectors' (once
    when the detectors write under the runs' directory, as by default)."""
    if detectors.resolve().is_relative_to(data_dir.resolve()):
        return [str(data_dir)]
    return [str(data_dir), str(detectors)]


def _catalog_is_current(path: Path) -> bool:
    """Whether the catalog database exists, stamped with the schema revision Tiled requires."""
    from tiled.catalog.core import REQUIRED_REVISION

    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as database:
            stamped = database.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:  # no alembic table yet: created but never initialised
        return False
    return bool(stamped == [(REQUIRED_REVISION,)])


@dataclass
class CatalogOutcome:
    """What the catalog holds of a run, read back from it at the run's end."""

    address: str | None  # where the run is (see `CatalogConnection.run_address`); None: not there
    complete: bool  # the stop is recorded and every bundled point is a row
    rows: int  # rows of the bundled stream in the catalog
    problems: list[str] = field(default_factory=list)


class RunCatalogWriter:
    """One run into the catalog: TiledWriter (batched) for its documents, and Orchestrion's
    metadata: the run's HDF5 path (from its start), fit results and status (at its stop),
    and the search keys `SEARCH_KEYS` copied to the top level of the run's metadata, so a
    plain Tiled client finds runs by ``Key("experiment")`` and ``Key("job_id")``.

    The batch is chosen per run (`run_batch_size`) when the data stream's descriptor says
    how large a point is; until then (the start and the first descriptors, moments before
    the first point) the run's documents are held here.

    Made per run by the post-processing router; `verify` reads the run back.
    """

    def __init__(
        self,
        connection: CatalogConnection,
        *,
        batch_size: int = 500,
        hdf5: str | None = None,
        data_stream: str,
        file_arrays: FileArrays | None = None,
    ) -> None:
        self.connection = connection
        # Large arrays of the points, registered from the run's file (ADR 0215).
        self.registered = file_arrays
        self.data_stream = data_stream
        self.batch_size = batch_size  # the largest batch
        self.writer: Any = None  # TiledWriter, once the batch is chosen
        self._held: list[tuple[str, dict[str, Any]]] = []
        self.run_uid: str | None = None
        self._node: Any = None
        self._annotations: dict[str, Any] = {"hdf5": hdf5} if hdf5 else {}
        self._analysis: str | None = None  # the analysis stream's descriptor uid
        self.stopped = False

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if self.writer is None:
            self._held.append((name, doc))
            data_descriptor = name == "descriptor" and doc.get("name") == self.data_stream
            if not (data_descriptor or name == "stop" or len(self._held) >= HELD_DOCUMENTS):
                return
            start = self._held[0][1] if self._held[0][0] == "start" else {}
            if data_descriptor and self.registered is not None:
                self.registered.plan(doc)  # before the held documents of the stream it mirrors
            batch = run_batch_size(start, doc if data_descriptor else None, self.batch_size)
            self._start_writer(batch)
            held, self._held = self._held, []
            for held_name, held_doc in held:
                self._write(held_name, held_doc)
            return
        self._write(name, doc)

    def _start_writer(self, batch_size: int) -> None:
        from bluesky_tiled_plugins import TiledWriter

        # Arrays go to array storage whatever their size: the SQL table storage takes
        # no list columns (per-shot counts of a few shots failed with HTTP 500).
        # No normalizer: the documents are current event-model ones already, and its
        # per-document schema validation was a third of the writer's time.
        self.writer = TiledWriter(self.connection.client, batch_size=batch_size, max_array_size=0, normalizer=None)

    def _write(self, name: str, doc: dict[str, Any]) -> None:
        if self.registered is None:
            self.writer(name, doc)
        else:
            for written_name, written in self.registered.translate(name, doc):
                self.writer(written_name, written)
        if name == "start":
            self.run_uid = str(doc["uid"])
            self._node = self.connection.client[doc["uid"]]
            top = {key: doc[key] for key in SEARCH_KEYS if doc.get(key) is not None}
            self._annotate(top)
        elif name == "descriptor" and doc.get("name") == ANALYSIS:
            self._analysis = doc["uid"]
        elif name in ("event", "event_page") and doc["descriptor"] == self._analysis:
            data = doc["data"] if name == "event" else {k: v[-1] for k, v in doc["data"].items()}
            self._annotations["analysis"] = _fit_values(data)
        elif name == "stop":
            self.stopped = True
            if "analysis" in self._annotations:  # else nothing new since the start: no request
                self._annotate({})

    def _annotate(self, top: dict[str, Any]) -> None:
        """Record Orchestrion's metadata of the run: the whole entry each time, since the
        client's copy of the metadata may predate the previous update."""
        self._node.update_metadata(metadata={**top, CATALOG_MD: dict(self._annotations)}, drop_revision=True)

    def verify(self, expected_rows: int, external: Mapping[str, int] | None = None) -> CatalogOutcome:
        """Read the run back: its stop recorded, ``expected_rows`` rows in the data stream,
        and the ``external`` arrays (``STREAM/KEY``: rows) registered from detectors' files."""
        assert self.run_uid is not None
        outcome = check_run(self.connection, self.run_uid, self.data_stream, expected_rows, external)
        if self.registered is not None and self.registered.registers and outcome.address is not None:
            problems = self.registered.check(self.connection.client[self.run_uid], expected_rows)
            outcome.problems.extend(problems)
            outcome.complete = outcome.complete and not problems
        return outcome


class FileArrays:
    """The large arrays of a run's points as its HDF5 file holds them, for TiledWriter.

    A point's array above `SMALL_POINT_BYTES` is in the run's file already (the HDF5 stage
    writes each document before the catalog's stage sees it); copying it into Tiled's
    array storage as well, once for the bundled points and once for the raw stream they
    came from, cost 95 % of the pipeline's throughput for 1 MiB points.  So each such key
    becomes what a file-writing detector's is: its data key says ``external: "STREAM:"``,
    a StreamResource names the run's file and the key's dataset, the events carry no
    value of it, and a StreamDatum per event says which row of the dataset is that point.
    TiledWriter registers the dataset (no byte is copied); the catalog reads the arrays
    from the file (ADR 0215).

    ``dataset_of(key)`` is the dataset of a data key of the data stream in the file, or
    None (not a numeric row-per-point column: copied as before).  ``mirrored``, the one
    stream the points are bundled from (None when there are several), gets its large
    keys registered from the same datasets: its event ``k`` is bundled point ``k``, which
    each point confirms (the bundled value is the very object the raw event carried);
    a point that breaks it is a problem `check` reports, so the run is catalogued again
    by ``orchestrion catalog repair``, with the arrays copied.
    """

    def __init__(
        self, path: str, dataset_of: Callable[[str], str | None], data_stream: str, mirrored: str | None = None
    ) -> None:
        self.uri = "file://localhost" + str(Path(path).resolve())
        self.dataset_of = dataset_of
        self.data_stream = data_stream
        self.mirrored = mirrored
        self.planned = False
        self.datasets: dict[str, str] = {}  # data key -> its dataset, for the keys registered
        self.descriptor: str | None = None  # uid of the data stream's first descriptor
        self.resources: dict[str, str] = {}  # data key -> the data stream's StreamResource uid
        self.mirror_descriptor: str | None = None
        self.mirror_resources: dict[str, str] = {}  # data key -> the mirrored stream's StreamResource uid
        self.rows = 0  # events of the data stream so far: the next point's row in the file
        self.pending: dict[str, collections.deque[tuple[int, Any]]] = {}  # mirrored (seq_num, value) not yet a row
        self.mirror_rows = 0
        self.broken: str | None = None  # why the mirrored stream's rows are not the points'
        self.problems: list[str] = []  # what `check` found
        self._last: dict[str, Any] = {}  # the last point's value of each key, for `check`
        self._run_uid = ""

    @property
    def registers(self) -> bool:
        """Whether any key of the run is registered from its file."""
        return bool(self.resources or self.mirror_resources)

    def plan(self, descriptor: Mapping[str, Any]) -> None:
        """Which keys of the data stream's (first) descriptor are registered from the file."""
        self.planned = True
        for key, spec in (descriptor.get("data_keys") or {}).items():
            shape = spec.get("shape") or []
            if spec.get("external") or spec.get("dtype") != "array" or not shape or None in shape:
                continue
            if point_bytes({key: spec}) <= SMALL_POINT_BYTES:
                continue
            dataset = self.dataset_of(key)
            if dataset is not None:
                self.datasets[key] = dataset

    def translate(self, name: str, doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The documents TiledWriter gets for one of the run's documents."""
        if name == "start":
            self._run_uid = str(doc["uid"])
        elif name == "descriptor" and doc.get("name") == self.data_stream and self.descriptor is None:
            if not self.planned:
                self.plan(doc)
            self.descriptor = str(doc["uid"])
            return self._registered("descriptor", doc, self.resources)
        elif name == "descriptor" and doc.get("name") == self.mirrored and self.mirror_descriptor is None:
            self.mirror_descriptor = str(doc["uid"])
            # A mirrored stream seen before the plan (no data stream yet) keeps its copies.
            return self._registered("descriptor", doc, self.mirror_resources) if self.planned else [(name, doc)]
        elif name in ("event", "event_page") and doc["descriptor"] == self.descriptor and self.resources:
            return [item for event in _events(name, doc) for item in self._point(event)]
        elif name in ("event", "event_page") and doc["descriptor"] == self.mirror_descriptor and self.mirror_resources:
            return [("event", self._mirror_event(event)) for event in _events(name, doc)]
        return [(name, doc)]

    def _registered(
        self, name: str, doc: dict[str, Any], resources: dict[str, str]
    ) -> list[tuple[str, dict[str, Any]]]:
        """A descriptor with its planned keys external, and their StreamResources."""
        data_keys = dict(doc.get("data_keys") or {})
        documents: list[tuple[str, dict[str, Any]]] = []
        for key, dataset in self.datasets.items():
            spec = data_keys.get(key)
            if spec is None or spec.get("external"):
                continue
            uid = resources[key] = f"{doc['uid']}-{key}"
            data_keys[key] = {**spec, "external": "STREAM:"}
            documents.append(("stream_resource", {
                "uid": uid, "run_start": self._run_uid, "data_key": key, "mimetype": "application/x-hdf5",
                "uri": self.uri, "parameters": {"dataset": dataset, "swmr": True},
            }))  # fmt: skip
        return [(name, {**doc, "data_keys": data_keys} if documents else doc), *documents]

    def _mirror_event(self, doc: dict[str, Any]) -> dict[str, Any]:
        data, timestamps = dict(doc["data"]), dict(doc.get("timestamps") or {})
        for key in self.mirror_resources:
            self.pending.setdefault(key, collections.deque()).append((int(doc["seq_num"]), data.pop(key, None)))
            timestamps.pop(key, None)
        return {**doc, "data": data, "timestamps": timestamps}

    def _point(self, doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        row, seq_num = self.rows, int(doc["seq_num"])
        self.rows += 1
        data, timestamps = dict(doc["data"]), dict(doc.get("timestamps") or {})
        for key in self.resources:
            self._last[key] = data.pop(key, None)
            timestamps.pop(key, None)
        documents: list[tuple[str, dict[str, Any]]] = [("event", {**doc, "data": data, "timestamps": timestamps})]
        for resource in self.resources.values():
            documents.append(_datum(resource, self.descriptor, row, seq_num))
        if self.mirror_resources and self.broken is None:
            documents.extend(self._mirror_rows_of(row))
        return documents

    def _mirror_rows_of(self, row: int) -> list[tuple[str, dict[str, Any]]]:
        """The mirrored stream's StreamDatums for point ``row``: its next event's, if it is the point's."""
        heads = {key: self.pending[key][0] if self.pending.get(key) else None for key in self.mirror_resources}
        if any(head is None or head[1] is not self._last.get(key) for key, head in heads.items()):
            self.broken = f"point {row + 1} is not {self.mirrored} event {self.mirror_rows + 1}"
            return []
        self.mirror_rows += 1
        datums = []
        for key, resource in self.mirror_resources.items():
            seq_num, _ = self.pending[key].popleft()
            datums.append(_datum(resource, self.mirror_descriptor, row, seq_num))
        return datums

    def check(self, node: Any, expected_rows: int) -> list[str]:
        """Each registered key: ``expected_rows`` rows (the mirrored stream's: one per event),
        and its last row read back through the catalog (from the file) equal to the last point's."""
        import numpy as np

        problems: list[str] = []
        if self.mirror_resources:
            unmatched = max((len(queue) for queue in self.pending.values()), default=0)
            if self.broken or unmatched:
                why = self.broken or f"{unmatched} {self.mirrored} events were never bundled"
                problems.append(f"the catalog's {self.mirrored} arrays are not the run's points ({why})")
        wanted = [(self.data_stream, key, expected_rows) for key in self.resources]
        wanted += [(str(self.mirrored), key, self.mirror_rows) for key in self.mirror_resources]
        for stream, key, rows_expected in wanted:
            path = f"{stream}/{key}"
            try:
                array = node[path]
                rows = int(array.shape[0])
                if rows < rows_expected:
                    problems.append(f"the catalog registers {rows} of {rows_expected} rows of {path} (the run's file)")
                    continue
                if rows and key in self._last:
                    # The head of the last row's first line: read from the file through the
                    # catalog like any client's read, a few KiB however large the row.
                    measured = np.asarray(self._last[key])
                    head = (0,) * (measured.ndim - 1) + (slice(0, CHECKED_ELEMENTS),)
                    if not np.array_equal(array[(rows - 1, *head)], measured[head]):
                        problems.append(f"the catalog reads another last row of {path} than the run measured")
            except Exception as exc:  # the catalog cannot read the run's file: no client will
                problems.append(f"the catalog cannot read {path} from the run's file: {type(exc).__name__}: {exc}")
        self.problems = problems
        return problems


def _events(name: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    if name == "event":
        return [doc]
    from event_model import unpack_event_page

    return [dict(event) for event in unpack_event_page(doc)]  # type: ignore[arg-type]


def _datum(resource: str, descriptor: str | None, row: int, seq_num: int) -> tuple[str, dict[str, Any]]:
    return ("stream_datum", {
        "uid": f"{resource}/{row}", "stream_resource": resource, "descriptor": descriptor,
        "indices": {"start": row, "stop": row + 1}, "seq_nums": {"start": seq_num, "stop": seq_num + 1},
    })  # fmt: skip


CHECKED_ELEMENTS = 512  # of a registered array's last row, read back at the stop
HELD_DOCUMENTS = 1000  # held before the data stream's descriptor at most (a long wait for a first point)
SMALL_POINT_BYTES = 64 * 1024
BATCHES_PER_RUN = 2


def run_batch_size(start: Mapping[str, Any], descriptor: Mapping[str, Any] | None, largest: int) -> int:
    """Events per TiledWriter write for a run: a run of known length and small points in
    about `BATCHES_PER_RUN` writes while it runs, so that its stop (where the command
    waits to report the run catalogued) has only the last left, and its streams' tables
    are made (Tiled's first requests of a new app are the slowest) while it runs; points
    of large arrays (above `SMALL_POINT_BYTES`) in the fewest, largest writes (``largest``):
    Tiled appends to their array storage in each, and smaller batches of 1 MiB points
    halved the pipeline's throughput."""
    points = start.get("num_points")
    if descriptor is None or not isinstance(points, int) or isinstance(points, bool) or points <= 0:
        return largest
    if point_bytes(descriptor.get("data_keys") or {}) > SMALL_POINT_BYTES:
        return largest
    return max(1, min(largest, -(-points // BATCHES_PER_RUN)))


def point_bytes(data_keys: Mapping[str, Mapping[str, Any]]) -> int:
    """About how many bytes one event of these data keys carries."""
    import numpy as np

    total = 0
    for spec in data_keys.values():
        if spec.get("external"):
            continue  # in a file of its own; the event carries a reference
        elements = 1
        for extent in spec.get("shape") or []:
            elements *= max(int(extent or 1), 1)
        try:
            itemsize = np.dtype(spec["dtype_numpy"]).itemsize if spec.get("dtype_numpy") else 8
        except TypeError:
            itemsize = 8
        total += elements * itemsize
    return total


def check_run(
    connection: CatalogConnection,
    run_uid: str,
    data_stream: str,
    expected_rows: int,
    external: Mapping[str, int] | None = None,
) -> CatalogOutcome:
    """What the catalog holds of ``run_uid``: is its stop there, how many data rows, and
    (``external``: ``STREAM/KEY`` -> rows) the detectors' arrays it registered."""
    problems: list[str] = []
    try:
        node = connection.client[run_uid]
    except KeyError:
        return CatalogOutcome(None, False, 0, ["the run is not in the catalog"])
    if not (node.metadata.get("stop") or {}):
        problems.append("the catalog has no stop document of the run")
    rows = catalog_rows(node, data_stream)
    if rows < expected_rows:
        problems.append(f"the catalog holds {rows} of {expected_rows} points")
    for path, promised in (external or {}).items():
        # The external asset's shape is metadata (from the StreamDatums): no frame is read.
        try:
            registered = int(node[path].shape[0])
        except (KeyError, IndexError, TypeError):
            registered = 0
        if registered < promised:
            problems.append(f"the catalog registers {registered} of {promised} frames of {path}")
    return CatalogOutcome(connection.run_address(run_uid), not problems, rows, problems)


def catalog_rows(node: Any, stream: str) -> int:
    """Rows of ``stream`` in a run's catalog entry (0 when it has none)."""
    # One request for the column (Tiled walks a path in one lookup; asking the run for
    # the stream, then the stream for the column, took four at each run's stop), and
    # its shape is metadata: no row is read.  TiledWriter keeps a stream's columns in
    # its table ``internal``: named by its own path, the column is one request, not the
    # two that the stream's flattened view of it takes.
    for path in (f"{stream}/internal/seq_num", f"{stream}/seq_num"):
        try:
            return int(node[path].shape[0])
        except KeyError:
            continue
    return 0


def delete_run(connection: CatalogConnection, run_uid: str) -> None:
    """Remove a run's (partial) entry, so that it can be written again whole."""
    if run_uid in connection.client:
        connection.client[run_uid].delete(recursive=True, external_only=False)


def _fit_values(data: Mapping[str, Any]) -> dict[str, Any]:
    return {fit_name(k): float(v) for k, v in data.items()}
