"""Every run into a Tiled catalog, through bluesky-tiled-plugins' TiledWriter.

Embedded (no ``tiled_uri`` configured): a persistent catalog under
``$ORCHESTRION_HOME/tiled`` (``catalog.db``, file storage ``data/`` and SQL table
storage ``tables.db``: TiledWriter needs the SQL storage for event tables), served
in-process.  Services: the Tiled server at ``tiled_uri`` with ``tiled_api_key``.

Besides what TiledWriter stores (the start and stop documents as metadata, each stream
as a table), each run's metadata gets ``orchestrion: {hdf5: PATH, analysis: {fits},
status}`` (the path from its start on, the fits and status at its stop), so its HDF5
file is reachable from its catalog entry, and the search keys (`SEARCH_KEYS`) at its
top level.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrion.config import OrchestrionConfig, detectors_dir
from orchestrion.schema import ANALYSIS, CATALOG_MD, EXPERIMENT_MD, JOB_ID_KEY, fit_name

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
        f"-w sqlite:///{home / 'tiled' / 'tables.db'} -r {detectors_dir(home)}"
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

    The detectors' directory (``detector_data_dir``, see `OrchestrionConfig.detector_data_dir`)
    is readable storage: the frames that file-writing detectors write there are the catalog's
    external assets, read where they are (Tiled refuses a ``file:`` asset outside it).
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
            readable_storage=[str(detectors)],
            # Tiled checks and initialises a catalog in a child interpreter of its own
            # (seconds of imports, at every open): only for one not yet at its revision.
            init_if_not_exists=not _catalog_is_current(paths["catalog"]),
        )
    # An in-process app is no server: its start-up banner ("Tiled version ...") is noise
    # on a user's terminal, and so is starlette's deprecation of the test client that
    # tiled 0.2.20 uses to talk to it in-process.
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)
    app: Any = build_app(adapter)
    if not (adapter.context.cache_config or adapter.context.webhook_secret_keys):
        app = StreamClosesAnswered(app)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
        context = Context.from_app(app)
    client = from_context(context)
    return CatalogConnection(client=client, location=catalog_uri, served=False, _context=context)


class StreamClosesAnswered:
    """Tiled's in-process app, answering a stream's close itself.

    TiledWriter ends each run by closing the live stream of every node it wrote (``DELETE
    /api/v1/stream/close/PATH``; 12 for a spectroscopy run), which a catalog without a
    streaming cache or webhooks (the embedded one: neither is configured) does nothing
    with but look the node up: 10-13 ms each, at every run's stop, while the command waits
    for the run to be catalogued.  Every other request, and the app's attributes (the
    client reads its settings from it), go to Tiled's app.
    """

    CLOSE_PREFIX = "/api/v1/stream/close/"

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "DELETE" and scope["path"].startswith(self.CLOSE_PREFIX):
            # What Tiled's endpoint answers (it returns nothing): 200, JSON null.
            headers = [(b"content-type", b"application/json"), (b"content-length", b"4")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"null"})
            return
        await self.app(scope, receive, send)


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
        self, connection: CatalogConnection, *, batch_size: int = 500, hdf5: str | None = None, data_stream: str
    ) -> None:
        self.connection = connection
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
        self.writer(name, doc)
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
            self._annotations["status"] = doc.get("exit_status")
            self._annotate({})

    def _annotate(self, top: dict[str, Any]) -> None:
        """Record Orchestrion's metadata of the run: the whole entry each time, since the
        client's copy of the metadata may predate the previous update."""
        self._node.update_metadata(metadata={**top, CATALOG_MD: dict(self._annotations)}, drop_revision=True)

    def verify(self, expected_rows: int, external: Mapping[str, int] | None = None) -> CatalogOutcome:
        """Read the run back: its stop recorded, ``expected_rows`` rows in the data stream,
        and the ``external`` arrays (``STREAM/KEY``: rows) registered from detectors' files."""
        assert self.run_uid is not None
        return check_run(self.connection, self.run_uid, self.data_stream, expected_rows, external)


HELD_DOCUMENTS = 1000  # held before the data stream's descriptor at most (a long wait for a first point)
SMALL_POINT_BYTES = 64 * 1024
BATCHES_PER_RUN = 4


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
    # its shape is metadata: no row is read.
    try:
        column = node[f"{stream}/seq_num"]
    except KeyError:
        return 0
    return int(column.shape[0])


def delete_run(connection: CatalogConnection, run_uid: str) -> None:
    """Remove a run's (partial) entry, so that it can be written again whole."""
    if run_uid in connection.client:
        connection.client[run_uid].delete(recursive=True, external_only=False)


def _fit_values(data: Mapping[str, Any]) -> dict[str, Any]:
    return {fit_name(k): float(v) for k, v in data.items()}
