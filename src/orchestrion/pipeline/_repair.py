"""Catalog repair: runs missing from the catalog, or missing rows, completed from their spool.

A run's documents stay spooled (`_spool`) until the catalog has been read back holding
the run complete.  `repair_catalog` replays each spool whose writer is gone: a partial
entry is removed and the run written again whole (a run whose documents ended before
its stop gets a stop with exit status "fail" and a reason saying so), read back, and
the spool removed once the catalog holds it.  Post-processing calls it when it connects
to the catalog; ``orchestrion catalog repair`` calls it on demand.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrion.config import OrchestrionConfig
from orchestrion.schema import BUNDLED

from ._bundler import RunBundler
from ._external import ExternalData
from ._spool import HDF5_NOTE, SUFFIX, claim, read_spool, spool_dir, spooled_runs
from ._tiled import CatalogConnection, RunCatalogWriter, check_run, connect_catalog, delete_run

logger = logging.getLogger(__name__)


@dataclass
class RepairResult:
    """What repair did for one run: ``action`` is "repaired", "complete" (it was already),
    "dropped" (an empty spool) or "failed" (``problems`` says why; the spool is kept)."""

    run: str
    action: str
    rows: int = 0
    address: str | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def repair_catalog(
    config: OrchestrionConfig, connection: CatalogConnection | None = None, *, skip: Iterable[str] = ()
) -> list[RepairResult]:
    """Complete in the catalog every spooled run whose writer is gone (not those in ``skip``)."""
    paths = [p for p in spooled_runs(spool_dir(config.home)) if p.name.removesuffix(SUFFIX) not in set(skip)]
    if not paths:
        return []
    own = connection is None
    connection = connection or connect_catalog(config)
    results = []
    try:
        for path in paths:
            with claim(path) as free:
                if free:  # else its writer is alive
                    results.append(_repair_one(config, connection, path))
    finally:
        if own:
            connection.close()
    return results


def _repair_one(config: OrchestrionConfig, connection: CatalogConnection, path: Path) -> RepairResult:
    uid = path.name.removesuffix(SUFFIX)
    documents = read_spool(path)
    if not documents or documents[0][0] != "start":
        path.unlink(missing_ok=True)
        return RepairResult(uid, "dropped", problems=["the spool held no start document"])
    try:
        result = _replay(config, connection, uid, documents)
    except Exception as exc:
        logger.exception("catalog repair: run %s could not be written", uid)
        return RepairResult(uid, "failed", problems=[f"{type(exc).__name__}: {exc}"])
    if not result.problems:
        path.unlink(missing_ok=True)
        logger.warning("catalog repair: run %s %s in the catalog (%d points)", uid, result.action, result.rows)
    return result


def rewrite_run(
    config: OrchestrionConfig, connection: CatalogConnection, uid: str, documents: list[tuple[str, dict[str, Any]]]
) -> RepairResult:
    """Write a run's catalog entry again whole from its documents, every array copied (its
    entry, whatever it holds, removed first)."""
    return _replay(config, connection, uid, documents, check_first=False)


def _replay(
    config: OrchestrionConfig,
    connection: CatalogConnection,
    uid: str,
    documents: list[tuple[str, dict[str, Any]]],
    check_first: bool = True,
) -> RepairResult:
    """``check_first``: leave an entry the catalog reads back complete as it is."""
    # The bundled points the run had, to compare with what the catalog holds.
    counter = RunBundler(documents[0][1], lambda name, doc: None)
    external = ExternalData()  # and the detectors' frames it registers (ADR 0212)
    for name, doc in documents:
        if name not in ("start", HDF5_NOTE):
            counter(name, doc)
            external.add(name, doc)
    expected = counter.bundled_points
    if check_first:
        present = check_run(connection, uid, BUNDLED, expected, external.promised())
        if present.complete:
            return RepairResult(uid, "complete", present.rows, present.address)
    delete_run(connection, uid)
    hdf5 = next((str(doc["path"]) for name, doc in documents if name == HDF5_NOTE), None)
    writer = RunCatalogWriter(connection, batch_size=config.tiled_batch_size, hdf5=hdf5, data_stream=BUNDLED)
    bundler = RunBundler(documents[0][1], writer)
    for name, doc in documents:
        if name != HDF5_NOTE:
            bundler(name, doc)
    if documents[-1][0] != "stop":
        bundler("stop", {
            "uid": str(uuid.uuid4()), "run_start": uid, "time": time.time(), "exit_status": "fail",
            "reason": "incomplete: the run's documents ended before its stop; catalogued by repair",
            "num_events": {},
        })  # fmt: skip
    done = writer.verify(bundler.bundled_points, external.promised())
    return RepairResult(uid, "repaired" if done.complete else "failed", done.rows, done.address, done.problems)
