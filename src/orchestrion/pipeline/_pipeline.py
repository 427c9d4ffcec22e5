"""Assembling the callback chain that a RunEngine's documents flow through."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig

from ._early import post_processing_imports
from ._hdf5_files import read_status
from ._offload import ProcessSink, Report
from ._post import PostProcessing
from ._recovery import recover_one, recover_orphans
from ._repair import repair_catalog
from ._summary import RunSummaryCollector
from ._tiled import connect_catalog  # Tiled itself is imported where a catalog is opened

logger = logging.getLogger(__name__)

DocumentCallback = Callable[[str, dict[str, Any]], Any]


class CatalogStage(Protocol):
    def __call__(self, name: str, doc: dict[str, Any]) -> Any: ...

    def wait_catalogued(self, run_uid: str | None, timeout: float) -> bool: ...

    def lost_runs(self) -> dict[str, str]: ...


class DocumentPipeline:
    """The callbacks of one process, in the order documents reach them."""

    def __init__(self, callbacks: list[DocumentCallback] | None = None) -> None:
        self.summaries = RunSummaryCollector()
        self.callbacks: list[DocumentCallback] = list(callbacks or [])
        self._tokens: list[int] = []
        # The stage that finishes runs after their stop document (the post-processing
        # process of `build_pipeline`): see `wait_catalogued`.
        self.catalog_stage: CatalogStage | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.summaries(name, doc)
        for callback in self.callbacks:
            callback(name, doc)

    def wait_catalogued(self, run_uid: str | None = None, timeout: float = 300.0) -> bool:
        """Wait until ``run_uid`` (default: every run so far) is written: its HDF5 file
        closed and, with Tiled, the run complete in the catalog.

        The RunEngine does not wait for post-processing at a run's stop: call this before
        reading a run back.  False (and the reason logged) if it did not get there.
        """
        if self.catalog_stage is None:
            return True
        if self.catalog_stage.wait_catalogued(run_uid, timeout):
            return True
        for uid, reason in self.catalog_stage.lost_runs().items():
            if run_uid in (None, uid):
                self._settle_lost(uid, reason)
        return False

    def catalog_pending(self, run_uid: str) -> bool:
        """True while the run's file is written and its catalog entry is still to be
        completed by post-processing (the bus workers do it once Tiled answers)."""
        pending = getattr(self.catalog_stage, "catalog_pending", None)
        return bool(pending(run_uid)) if callable(pending) else False

    def outcome(self, run_uid: str, timeout: float = 300.0) -> dict[str, Any] | None:
        """The run's checked outcome, as post-processing read it back from the run's file
        and catalog entry (`RunOutcome.to_dict`: ``status``, "incomplete" when not all was
        written; ``points`` durable in the file; ``hdf5``; ``tiled`` when the catalog holds
        it complete; ``problems``), embedded or over the bus alike.

        Waits up to ``timeout`` s for it (`wait_catalogued`); None for a run this pipeline
        did not see, or whose outcome is not known by then.
        """
        summary = self.summaries.runs.get(run_uid)
        if summary is None:
            return None
        if summary.outcome is None:
            self.wait_catalogued(run_uid, timeout)
        return summary.outcome

    def release(self) -> None:
        """Let a held post-processing stage be built now (see `build_pipeline`'s ``hold``)."""
        release = getattr(self.catalog_stage, "release", None)
        if callable(release):
            release()

    def take_note(self, note: dict[str, Any]) -> None:
        """What the post-processing process reports of a run: its HDF5 file, its catalog
        node, and what it made durable (the run's outcome)."""
        summary = self.summaries.runs.get(str(note.get("run")))
        if summary is None:
            return
        if "hdf5" in note:
            summary.hdf5 = str(note["hdf5"])
        if "tiled" in note:
            summary.tiled = str(note["tiled"])
        if "outcome" in note:
            summary.take_outcome(note["outcome"])

    def _settle_lost(self, run_uid: str, reason: str) -> None:
        """A run post-processing did not finish: its file recovered here, its summary what
        the file holds."""
        summary = self.summaries.runs.get(run_uid)
        if summary is None or summary.outcome is not None:
            return
        problems = [f"post-processing did not finish the run: {reason}"]
        points, path = 0, summary.hdf5
        if path is not None:
            try:
                recovered = recover_one(Path(path))
                if recovered is not None:
                    points, path = recovered.points, str(recovered.path)
                    if recovered.action != "recovered":
                        problems.append(f"its file was {recovered.action}: {recovered.reason}")
                else:
                    points = read_status(Path(path))[1]
            except Exception as exc:
                logger.exception("run %s: its file %s could not be read back", run_uid, path)
                problems.append(f"its file could not be read back: {exc}")
        problems.append("the catalog is completed from the run's spool by the next run or `orchestrion catalog repair`")
        summary.take_outcome({
            "status": "incomplete", "points": points, "hdf5": path, "tiled": None, "problems": problems,
        })  # fmt: skip

    def subscribe(self, RE: RunEngine) -> None:
        self._tokens.append(RE.subscribe(self))

    def unsubscribe(self, RE: RunEngine) -> None:
        for token in self._tokens:
            RE.unsubscribe(token)
        self._tokens.clear()

    def close(self) -> None:
        for callback in self.callbacks:
            close = getattr(callback, "close", None)
            if callable(close):
                close()


def build_pipeline(config: OrchestrionConfig, *, hold: bool = False) -> DocumentPipeline:
    """The pipeline the configuration asks for, as a RunEngine subscribes it.

    In this process: the run summaries, and the hand-over of every document to the
    post-processing process (`ProcessSink`), which runs `build_post_processing`: bundler,
    HDF5 files and Tiled.  The RunEngine's thread does no more per document than count
    it and queue it: on two cores, every millisecond there is scan time (ADR 0205).  The
    post-processing process reports each run's HDF5 file, catalog node and what it made
    durable back to the summaries, and acknowledges each run when it is written
    (`wait_catalogued`).

    The post-processing process starts importing at once; with ``hold`` it builds its
    stage (recovering files, opening the catalog) only at `DocumentPipeline.release` or
    the first document, so a caller can start it before it has checked its request.
    """
    pipeline = DocumentPipeline()
    stage = ProcessSink(
        build_post_processing, config, "post-processing",
        on_note=pipeline.take_note, niceness=config.post_processing_niceness,
        preload=post_processing_imports(config), hold=hold,
    )  # fmt: skip
    pipeline.catalog_stage = stage
    pipeline.callbacks.append(_HandOver(stage))
    return pipeline


class _HandOver:
    """The hand-over to post-processing, which must never stop the RunEngine's run.

    A helper that died makes each later document of its run raise: logged once, until
    a document gets through again (the next run's start starts a new helper).
    """

    def __init__(self, stage: DocumentCallback) -> None:
        self.stage = stage
        self._failing = False

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            self.stage(name, doc)
        except Exception as exc:
            if not self._failing:
                logger.error("%s; the run's later documents do not reach post-processing", exc)
            self._failing = True
        else:
            self._failing = False

    def close(self) -> None:
        close = getattr(self.stage, "close", None)
        if callable(close):
            close()


def build_post_processing(
    config: OrchestrionConfig, report: Report | None = None, *, resuming: Sequence[str] = ()
) -> DocumentCallback:
    """Bundler, then HDF5 files and Tiled: what happens to a run's documents after the RunEngine.

    One `RunRouter` (`PostProcessing`) makes, per run, the chain bundler -> (HDF5
    serializer, Tiled writer), each stage guarded once: a stage's failure on one run is
    logged with the run uid and does not stop the run or the other stages.  Files whose
    writer died in an earlier process are recovered first (or set aside when they cannot
    be), and runs the catalog lacks are completed from their spools (`repair_catalog`).
    The result is a plain ``(name, doc)`` callable, so any transport (the
    post-processing process of `build_pipeline`, a message bus) can feed it; what it
    reports per run (``report(note)``: the file, the catalog node, and once per run the
    `RunOutcome` read back from both) is documented in `orchestrion.pipeline._post`.
    ``resuming``: runs a process that died was writing, which this one takes over
    (`PostProcessing.resume`): repair leaves their spools alone.
    """
    tell: Report = report or (lambda note: None)
    recover_orphans(config.data_dir)
    connection = None
    if config.tiled_enabled:
        try:
            connection = connect_catalog(config)
        except Exception:
            # The files are still written: a catalog that cannot be reached must not cost
            # the data.  The runs are spooled, and catalogued when it can be reached.
            logger.exception("Tiled writer: the catalog cannot be reached; runs are written to HDF5 and spooled")
        else:
            try:
                repair_catalog(config, connection, skip=resuming)
            except Exception:
                logger.exception("catalog repair failed; the spooled runs are kept for the next attempt")
    return PostProcessing(config, tell, connection)
