"""Every run into a Tiled catalog, through bluesky-tiled-plugins' TiledWriter.

Embedded (no ``tiled_uri`` configured): a persistent catalog under
``$ORCHESTRION_HOME/tiled`` (``catalog.db``, file storage ``data/`` and SQL table
storage ``tables.db``: TiledWriter needs the SQL storage for event tables), served
in-process.  Services: the Tiled server at ``tiled_uri`` with ``tiled_api_key``.

Besides what TiledWriter stores (the start and stop documents as metadata, each stream
as a table), each run's metadata gets ``orchestrion: {hdf5: PATH, analysis: {fits}}``
(the path from its start on, the fits at its stop), so its HDF5 file is reachable from
its catalog entry.
"""

from __future__ import annotations

import fcntl
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrion.config import OrchestrionConfig
from orchestrion.schema import ANALYSIS, fit_name

logger = logging.getLogger(__name__)

HDF5_NOTICE = "orchestrion_hdf5"  # not an event-model document: {run, path}, after a start


def run_address(config: OrchestrionConfig, run_uid: str) -> str:
    """Where a run is in the configured catalog (see `CatalogConnection.run_address`)."""
    if config.tiled_uri:
        return f"{config.tiled_uri.rstrip('/')}/api/v1/metadata/{run_uid}"
    return f"sqlite:///{embedded_catalog_paths(config.home)['catalog']}#/{run_uid}"


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
    return open_embedded_catalog(config.home)


def open_embedded_catalog(home: Path) -> CatalogConnection:
    """A persistent catalog under ``home/tiled``, served in this process."""
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    paths = embedded_catalog_paths(home)
    paths["files"].mkdir(parents=True, exist_ok=True)
    catalog_uri = f"sqlite:///{paths['catalog']}"
    # One process at a time: two that open a new catalog together both create its
    # tables, and the second fails ("table nodes_closure already exists").
    with open(paths["root"] / ".open.lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        adapter = catalog_from_uri(
            catalog_uri,
            writable_storage=[str(paths["files"]), f"sqlite:///{paths['tables']}"],
            init_if_not_exists=True,
        )
    # An in-process app is no server: its start-up banner ("Tiled version ...") is noise
    # on a user's terminal, and so is starlette's deprecation of the test client that
    # tiled 0.2.20 uses to talk to it in-process.
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
        context = Context.from_app(build_app(adapter))
    client = from_context(context)
    return CatalogConnection(client=client, location=catalog_uri, served=False, _context=context)


class TiledSink:
    """TiledWriter (batched) plus each run's HDF5 path and fit results in its metadata.

    The path arrives as an ``orchestrion_hdf5`` notice just after the run's start and
    is recorded at once; fit results, from the run's analysis stream, at its stop.
    """

    def __init__(self, connection: CatalogConnection, *, batch_size: int = 500) -> None:
        from bluesky_tiled_plugins import TiledWriter

        self.connection = connection
        # Arrays go to array storage whatever their size: the SQL table storage takes
        # no list columns (per-shot counts of a few shots failed with HTTP 500).
        # No normalizer: the documents are current event-model ones already, and its
        # per-document schema validation was a third of the writer's time.
        self.writer = TiledWriter(connection.client, batch_size=batch_size, max_array_size=0, normalizer=None)
        self._nodes: dict[str, Any] = {}  # run uid -> its container, from its start on
        self._annotations: dict[str, dict[str, Any]] = {}
        self._analysis_descriptors: dict[str, str] = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == HDF5_NOTICE:
            self._annotate(str(doc["run"]), {"hdf5": str(doc["path"])})
            return
        self.writer(name, doc)
        if name == "start":
            self._nodes[doc["uid"]] = self.connection.client[doc["uid"]]
            self._annotations[doc["uid"]] = {}
        elif name == "descriptor" and doc.get("name") == ANALYSIS:
            self._analysis_descriptors[doc["uid"]] = doc["run_start"]
        elif name == "event" and doc["descriptor"] in self._analysis_descriptors:
            run_uid = self._analysis_descriptors[doc["descriptor"]]
            self._annotations.setdefault(run_uid, {})["analysis"] = _fit_values(doc["data"])
        elif name == "stop":
            run_uid = doc["run_start"]
            fits = self._annotations.get(run_uid, {}).get("analysis")
            if fits:
                self._annotate(run_uid, {"analysis": fits})
            self._nodes.pop(run_uid, None)
            self._annotations.pop(run_uid, None)
            self._analysis_descriptors = {k: v for k, v in self._analysis_descriptors.items() if v != run_uid}

    def _annotate(self, run_uid: str, extra: dict[str, Any]) -> None:
        """Record ``extra`` under the run's ``orchestrion`` metadata, with what was there."""
        node = self._nodes.get(run_uid)
        if node is None:
            logger.warning("Tiled writer: run %s is not being written; %s not recorded", run_uid, sorted(extra))
            return
        annotations = self._annotations.setdefault(run_uid, {})
        annotations.update(extra)
        # The whole `orchestrion` entry each time: the client's copy of the metadata may
        # predate the previous update.
        node.update_metadata(metadata={"orchestrion": dict(annotations)}, drop_revision=True)

    def close(self) -> None:
        self.connection.close()


def _fit_values(data: Mapping[str, Any]) -> dict[str, Any]:
    return {fit_name(k): float(v) for k, v in data.items()}
