"""Post-processing: a run's documents after the RunEngine, one per-run chain at a time.

`PostProcessing` is one `RunRouter` (`RunsRouter`) whose factory builds, at each
run's start, that run's chain (`RunChain`): the event-model checks, the document
spool, the bundler, then the HDF5 serializer and the Tiled writer, each guarded once
(`Stage`).  Per-run state lives in the chain and goes with it at the stop.

What a transport learns of each run (``report(note)``, JSON-able dicts):

- ``{"run": UID, "hdf5": PATH}`` when the run's file is named (at its start);
- ``{"run": UID, "tiled": ADDRESS}`` when the catalog writer has the run's start;
- ``{"run": UID, "outcome": {...}}`` once, after the run's stop (or when post-processing
  is closed before it): `RunOutcome.to_dict`, what was read back from the file and the
  catalog.  A transport acknowledges the run after this note.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrion.config import OrchestrionConfig
from orchestrion.schema import BUNDLED, PRIMARY

from ._bundler import RunBundler
from ._checks import DocumentError, RunChecks
from ._external import ExternalData
from ._hdf5_files import STATUS_ERROR, STATUS_RUNNING
from ._repair import repair_catalog, rewrite_run
from ._routing import RunsRouter, Stage
from ._serializer import FileOutcome, Serializer
from ._spool import HDF5_NOTE, SUFFIX, SpoolWriter, read_spool, spool_dir
from ._tiled import CatalogConnection, CatalogOutcome, FileArrays, RunCatalogWriter, connect_catalog, delete_run

logger = logging.getLogger(__name__)

Note = dict[str, Any]
Report = Callable[[Note], None]
DocumentCallback = Callable[[str, dict[str, Any]], Any]

STATUS_INCOMPLETE = "incomplete"
# A file's statuses that are no run's final one: still written, abandoned, or cut short.
UNFINISHED = (STATUS_RUNNING, STATUS_ERROR, STATUS_INCOMPLETE)
RECONNECT_INTERVAL = 30.0  # s: how often a run's start tries a catalog that could not be reached


@dataclass
class RunOutcome:
    """What post-processing made durable of one run, read back, not assumed.

    ``status``: the run's own exit status ("success", "abort", "fail") when every
    point it produced is in its HDF5 file and (with a catalog) in the catalog;
    "incomplete" when not (``problems`` says what is missing, ``hdf5`` and ``tiled``
    where the rest is).  ``points``: points durable in the HDF5 file; ``bundled``: the
    points the bundler made of the run; ``catalog_rows``: the run's points in the
    catalog (None without one); ``tiled``: the run's address when the catalog holds
    it complete, else None; ``spool``: where its documents are kept until it is.
    ``file_complete``: the file is closed with its final status and every bundled point;
    ``catalog_complete``: the catalog holds the run's stop and every bundled point (None
    without a catalog).  A transport decides on these two: a bus worker acknowledges a
    run only when both hold (ADR 0610).  ``external``: each detector file the run's
    StreamResources name, read back at the stop (`ExternalCheck.to_dict`: data key,
    uri, frames promised and found); a file short of frames makes the run "incomplete"
    (ADR 0212).
    """

    run: str
    status: str
    points: int
    bundled: int
    hdf5: str | None
    tiled: str | None
    catalog_rows: int | None
    exit_status: str | None
    problems: list[str] = field(default_factory=list)
    spool: str | None = None
    file_complete: bool = False
    catalog_complete: bool | None = None
    external: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Settings:
    config: OrchestrionConfig
    report: Report
    connection: CatalogConnection | None
    superseded: dict[str, Path] = field(default_factory=dict)  # run uid -> the file a resumed run replaces


class RunChain:
    """One run through post-processing: checks, spool, bundler, HDF5 file and catalog."""

    def __init__(self, start: dict[str, Any], settings: _Settings) -> None:
        config = settings.config
        self.run_uid = str(start["uid"])
        self.settings = settings
        self.checks = RunChecks(self.run_uid)
        self.external = ExternalData()  # detectors' own files, read back at the stop
        self.spool: SpoolWriter | None = None
        # Spooled with or without a catalog: a post-processing process that dies mid-run
        # is replaced, and its successor rebuilds the run from the spool (ADR 0812).
        try:
            self.spool = SpoolWriter(spool_dir(config.home), self.run_uid)
        except OSError as exc:
            logger.error("run %s: its documents cannot be spooled: %s", self.run_uid, exc)
        self.serializer = Serializer(
            config.data_dir,
            file_prefix=config.hdf5_file_prefix,
            data_stream=BUNDLED,
            skip_streams=(PRIMARY,),  # every primary reading is in the bundled points
            buffer_points=config.hdf5_buffer_points,
            flush_interval=config.hdf5_flush_interval,
        )
        self.hdf5 = Stage(self.serializer, "HDF5 writer", self.run_uid)
        self.bundler = RunBundler(start, self._downstream)
        self.bundling = Stage(self.bundler, "bundler", self.run_uid)
        self.catalog: RunCatalogWriter | None = None
        self.tiled: Stage | None = None
        self.problems: list[str] = []
        self.exit_status: str | None = None
        self.done = False
        self._closing = False
        # A run taken over from a post-processing process that died: that process's file,
        # moved aside, goes once this chain's file holds the run.
        self.superseded: Path | None = settings.superseded.pop(self.run_uid, None)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if self.done:
            return
        if self.spool is not None:
            self.spool.append(name, doc)
        try:
            self.checks.check(name, doc)
        except DocumentError as exc:
            self._broken(str(exc))
            return
        if name == "stop" and self.checks.count_problem is not None:
            self.problems.append(self.checks.count_problem)
            self.serializer.mark_short(self.checks.count_problem)
        if name in ("descriptor", "stream_resource", "stream_datum"):
            self.external.add(name, doc)
        if self.bundling.failure is None:
            self.bundling(name, doc)
        else:  # unbundled, the raw streams still reach the catalog
            self._downstream(name, doc)
        if name == "stop":
            self.exit_status = str(doc.get("exit_status"))
            self._finish()

    def _broken(self, reason: str) -> None:
        logger.error("post-processing: %s; the run's later documents are not written", reason)
        if reason not in self.problems:
            self.problems.append(reason)
        self.hdf5.fail(reason, logged=True)
        if self.tiled is not None:
            self.tiled.fail(reason, logged=True)

    def _downstream(self, name: str, doc: dict[str, Any]) -> None:
        if name == "stop" and self._closing:
            self.hdf5.close()
        else:
            self.hdf5(name, doc)
        if name == "start":
            self._started(doc)
        elif self.tiled is not None:
            self.tiled(name, doc)

    def _started(self, doc: dict[str, Any]) -> None:
        report, path = self.settings.report, self.serializer.path
        if path is not None:
            report({"run": self.run_uid, "hdf5": str(path)})
            if self.spool is not None:
                self.spool.append(HDF5_NOTE, {"path": str(path)})
        connection = self.settings.connection
        if connection is None:
            return
        try:
            self.catalog = RunCatalogWriter(
                connection,
                batch_size=self.settings.config.tiled_batch_size,
                hdf5=str(path) if path else None,
                data_stream=BUNDLED,
                file_arrays=self._file_arrays(path),
            )
        except Exception as exc:
            logger.exception("run %s: the catalog writer could not be made", self.run_uid)
            self.problems.append(f"the catalog writer could not be made: {exc}")
            return
        self.tiled = Stage(self.catalog, "Tiled writer", self.run_uid)
        self.tiled("start", doc)
        if self.tiled.failure is None:
            report({"run": self.run_uid, "tiled": connection.run_address(self.run_uid)})

    def _file_arrays(self, path: Path | None) -> FileArrays | None:
        """The points' large arrays registered in the catalog from the run's file (ADR 0215)."""
        if path is None or not self.settings.config.tiled_register_arrays:
            return None
        monitored = self.bundler.monitored_streams
        return FileArrays(str(path), self._dataset_in_file, BUNDLED, monitored[0] if len(monitored) == 1 else None)

    def _dataset_in_file(self, key: str) -> str | None:
        """Where the run's file holds a data key's rows, while the HDF5 stage writes them."""
        return self.serializer.data_dataset(key) if self.hdf5.failure is None else None

    def close(self) -> None:
        """The run's documents ended before its stop: what came is finished, "incomplete"."""
        if self.done:
            return
        self._closing = True
        reason = "the run's documents ended before its stop document (its RunEngine's process went away)"
        self.problems.append(reason)
        stop = {"uid": str(uuid.uuid4()), "run_start": self.run_uid, "time": time.time(),
                "exit_status": "fail", "reason": reason, "num_events": {}}  # fmt: skip
        self.bundling("stop", stop)
        if self.bundling.failure is not None:
            self._downstream("stop", stop)
        self._finish()

    # -- the run's end ---------------------------------------------------------------------

    def _finish(self) -> None:
        self.done = True
        file = self.serializer.outcome or FileOutcome(self.serializer.path, None, 0, ["no file was written"])
        problems = [*self.problems, *file.problems]
        for stage in (self.bundling, self.hdf5, self.tiled):
            if stage is not None and stage.failure is not None and stage.failure not in problems:
                problems.append(stage.failure)
        bundled = self.bundler.bundled_points
        # The frames detectors wrote to their own files: each file holds what its
        # StreamDatums promised, or the run is incomplete (as for a missing point).
        external = self.external.check() if self.external else []
        for check in external:
            if check.problem is not None and check.problem not in self.problems:
                self.problems.append(check.problem)
                problems.append(check.problem)
        catalog = self._catalog_outcome(bundled, problems)
        durable = file.status is not None and file.points >= bundled and not file.problems
        spool_kept: str | None = None
        if self.spool is not None:
            catalogued = catalog is not None and catalog.complete
            if catalogued or (durable and not self.settings.config.tiled_enabled):
                self.spool.discard()
            else:
                self.spool.close()
                spool_kept = str(self.spool.path) if self.spool.failure is None else None
                if spool_kept:
                    problems.append(f"its documents are kept in {spool_kept} for `orchestrion catalog repair`")
        if self.superseded is not None:
            if durable:
                self.superseded.unlink(missing_ok=True)
            else:
                problems.append(f"the file of its earlier post-processing process is kept as {self.superseded}")
        in_catalog = not self.settings.config.tiled_enabled or (catalog is not None and catalog.complete)
        complete = durable and in_catalog and not self._closing and not self.problems
        outcome = RunOutcome(
            run=self.run_uid,
            status=(self.exit_status or STATUS_INCOMPLETE) if complete else STATUS_INCOMPLETE,
            points=file.points,
            bundled=bundled,
            hdf5=str(file.path) if file.path is not None and file.path.exists() else None,
            tiled=catalog.address if catalog is not None and catalog.complete else None,
            catalog_rows=catalog.rows if catalog is not None else None,
            exit_status=self.exit_status,
            problems=problems,
            spool=spool_kept,
            file_complete=durable and file.status not in UNFINISHED,
            catalog_complete=in_catalog if self.settings.config.tiled_enabled else None,
            external=[check.to_dict() for check in external],
        )
        if outcome.status == STATUS_INCOMPLETE:
            logger.error("run %s is incomplete: %s", self.run_uid, "; ".join(problems) or "unknown")
        self.settings.report({"run": self.run_uid, "outcome": outcome.to_dict()})

    def _catalog_outcome(self, bundled: int, problems: list[str]) -> CatalogOutcome | None:
        if not self.settings.config.tiled_enabled:
            return None
        if self.catalog is None or self.tiled is None:
            problems.append("the catalog could not be reached")
            return None
        if self.tiled.failure is not None or not self.catalog.stopped:
            return CatalogOutcome(None, False, 0, [])
        try:
            catalog = self.catalog.verify(bundled, self.external.promised())
            arrays = self.catalog.registered
            if not catalog.complete and arrays is not None and arrays.problems:
                catalog = self._catalogued_with_copies(catalog, arrays.problems)
        except Exception as exc:
            logger.exception("run %s: the catalog could not be read back", self.run_uid)
            problems.append(f"the catalog could not be read back: {exc}")
            return None
        problems.extend(catalog.problems)
        return catalog

    def _catalogued_with_copies(self, registered: CatalogOutcome, why: list[str]) -> CatalogOutcome:
        """The run written into the catalog again from its spool, its arrays copied: what a
        catalog that cannot read the run's file (or rows that are not the points) needs."""
        spool, connection = self.spool, self.settings.connection
        if spool is None or spool.failure is not None or connection is None:
            return registered
        logger.warning("run %s: %s; catalogued again with its arrays copied (tiled_register_arrays false "
                       "skips the attempt)", self.run_uid, "; ".join(why))  # fmt: skip
        result = rewrite_run(self.settings.config, connection, self.run_uid, read_spool(spool.path))
        return CatalogOutcome(result.address if not result.problems else None, not result.problems,
                              result.rows, list(result.problems))  # fmt: skip


class PostProcessing(RunsRouter):
    """Every run's documents into its own `RunChain`; a plain ``(name, doc)`` callable.

    Without a catalog connection (it could not be reached), a run's start tries again
    (at most every `RECONNECT_INTERVAL` seconds); once connected, the runs it lacks are
    completed from their spools (`repair_catalog`).
    """

    def __init__(self, config: OrchestrionConfig, report: Report, connection: CatalogConnection | None) -> None:
        super().__init__([self._factory], "post-processing")
        self.settings = _Settings(config, report, connection)
        self._retry_at = time.monotonic() + RECONNECT_INTERVAL

    def _factory(self, name: str, start: dict[str, Any]) -> tuple[list[DocumentCallback], list[Any]]:
        if self.settings.connection is None and self.settings.config.tiled_enabled:
            self._reconnect()
        chain = RunChain(start, self.settings)
        self.track(chain.run_uid, chain)
        return [chain], []

    def resume(self, run_uid: str, documents: Sequence[tuple[int, str, dict[str, Any]]]) -> bool:
        """Take over ``run_uid`` from a post-processing process that died mid-run.

        The run is written again whole: its spool (every document the dead process was
        given, kept before any stage saw it) followed by ``documents``, ``(index in the
        run, name, doc)`` the feeding process kept because the dead one never confirmed
        them (those the spool holds already are skipped).  The dead process's file, which
        recovery has closed as "incomplete", is moved aside and removed once the new one
        holds the run; its partial catalog entry is removed and the run catalogued anew.
        Returns whether the run's stop was among them.  Raises when the run cannot be
        rebuilt (its first documents are neither spooled nor kept).
        """
        spool = spool_dir(self.settings.config.home) / f"{run_uid}{SUFFIX}"
        # The spool being replayed is moved aside and kept until the new one holds as much:
        # a successor that dies in the middle leaves the complete one for the next.
        previous = spool.with_name(spool.name + ".resumed")
        if previous.exists():
            spool.unlink(missing_ok=True)  # a partial re-spool of an earlier take-over
        elif spool.exists():
            spool.replace(previous)
        spooled = read_spool(previous) if previous.exists() else []
        replay = [(name, doc) for name, doc in spooled if name != HDF5_NOTE]
        if documents and documents[0][0] > len(replay):
            raise RuntimeError(f"documents {len(replay)} to {documents[0][0] - 1} of the run were not kept")
        replay += [(name, doc) for index, name, doc in documents if index >= len(replay)]
        if not replay or replay[0][0] != "start":
            raise RuntimeError("its start document was not kept")
        old_file = next((Path(doc["path"]) for name, doc in spooled if name == HDF5_NOTE), None)
        if old_file is not None and old_file.exists():
            aside = old_file.with_name(f".{old_file.name}.superseded")
            old_file.replace(aside)
            self.settings.superseded[run_uid] = aside
        if self.settings.connection is not None:
            delete_run(self.settings.connection, run_uid)
        logger.warning("run %s: taken over from a post-processing process that died (%d documents replayed)",
                       run_uid, len(replay))  # fmt: skip
        for name, doc in replay:
            self(name, doc)
        previous.unlink(missing_ok=True)
        return replay[-1][0] == "stop"

    def _reconnect(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + RECONNECT_INTERVAL
        try:
            connection = connect_catalog(self.settings.config)
        except Exception as exc:
            logger.warning("the catalog still cannot be reached (%s); runs are spooled", exc)
            return
        self.settings.connection = connection
        logger.warning("the catalog can be reached again; spooled runs are completed in it")
        try:
            repair_catalog(self.settings.config, connection)
        except Exception:
            logger.exception("catalog repair failed; the spooled runs are kept for the next attempt")

    def close(self) -> None:
        """Finish the runs that did not stop ("incomplete"), then let go of the catalog."""
        super().close()
        if self.settings.connection is not None:
            self.settings.connection.close()
