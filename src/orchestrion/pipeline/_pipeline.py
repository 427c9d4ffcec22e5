"""Assembling the callback chain that a RunEngine's documents flow through."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig
from orchestrion.schema import BUNDLED, PRIMARY

from ._guard import Guarded
from ._offload import Report  # stdlib only at import, like `_tiled`
from ._summary import RunSummaryCollector
from ._tiled import HDF5_NOTICE, run_address  # stdlib only at import: Tiled loads where used

logger = logging.getLogger(__name__)

DocumentCallback = Callable[[str, dict[str, Any]], Any]


class CatalogStage(Protocol):
    def __call__(self, name: str, doc: dict[str, Any]) -> Any: ...

    def wait_catalogued(self, run_uid: str | None, timeout: float) -> bool: ...


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
        return self.catalog_stage.wait_catalogued(run_uid, timeout)

    def take_note(self, note: dict[str, Any]) -> None:
        """What the post-processing process reports of a run: its HDF5 file, its catalog node."""
        summary = self.summaries.runs.get(str(note.get("run")))
        if summary is None:
            return
        if "hdf5" in note:
            summary.hdf5 = str(note["hdf5"])
        if "tiled" in note:
            summary.tiled = str(note["tiled"])

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


def build_pipeline(config: OrchestrionConfig) -> DocumentPipeline:
    """The pipeline the configuration asks for, as a RunEngine subscribes it.

    In this process: the run summaries, and the hand-over of every document to the
    post-processing process (`ProcessSink`), which runs `build_post_processing`: bundler,
    HDF5 files and Tiled.  The RunEngine's thread does no more per document than count
    it and queue it: on two cores, every millisecond there is scan time (ADR 0205).  The
    post-processing process reports each run's HDF5 file and catalog node back to the
    summaries, and acknowledges each run when it is written (`wait_catalogued`).
    """
    from ._offload import ProcessSink

    pipeline = DocumentPipeline()
    stage = ProcessSink(
        build_post_processing, config, "post-processing",
        on_note=pipeline.take_note, niceness=config.post_processing_niceness,
    )  # fmt: skip
    pipeline.catalog_stage = stage
    # A helper that died makes each later document raise: logged once per run, and the
    # RunEngine's run goes on.
    pipeline.callbacks.append(Guarded(stage, "post-processing"))
    return pipeline


def build_post_processing(config: OrchestrionConfig, report: Report | None = None) -> DocumentCallback:
    """Bundler, then HDF5 files and Tiled: what happens to a run's documents after the RunEngine.

    Documents go bundler -> (HDF5 writer, Tiled); the bundler passes every document on
    and adds the "bundled" stream.  Files whose writer died in an earlier process are
    recovered first.  The result is a plain ``(name, doc)`` callable, so any transport
    (the post-processing process of `build_pipeline`, a message bus) can feed it.  Each
    stage is guarded: its failure on one run is logged with the run uid and does not
    stop the run or the other stages.  ``report`` gets ``{"run", "hdf5"}`` when a run's
    file is named and ``{"run", "tiled"}`` once the run is in the catalog.
    """
    from ._bundler import Bundler
    from ._hdf5 import Hdf5Writer
    from ._recovery import recover_incomplete

    tell: Report = report or (lambda note: None)
    recover_incomplete(config.data_dir)
    writer = Hdf5Writer(
        config.data_dir,
        on_file=lambda run_uid, path: tell({"run": run_uid, "hdf5": str(path)}),
        file_prefix=config.hdf5_file_prefix,
        data_stream=BUNDLED,
        skip_streams=(PRIMARY,),  # every primary reading is in the bundled points
        buffer_points=config.hdf5_buffer_points,
        flush_interval=config.hdf5_flush_interval,
    )
    sinks: list[DocumentCallback] = [Guarded(writer, "HDF5 writer")]
    if config.tiled_enabled:
        from ._tiled import TiledSink, connect_catalog

        try:
            tiled = TiledSink(connect_catalog(config), batch_size=config.tiled_batch_size)
        except Exception:
            # The files are still written: a catalog that cannot be reached must not cost
            # the data.  The runs' summaries then name no catalog node.
            logger.exception("Tiled writer: the catalog cannot be reached; runs are written to HDF5 only")
        else:
            sinks.append(Guarded(_TiledFeed(tiled, writer, config, tell), "Tiled writer"))
    return Guarded(Bundler(sinks), "bundler")


class _TiledFeed:
    """Hands documents to the Tiled stage; tells it and the summaries where the run is."""

    def __init__(self, tiled: DocumentCallback, writer: Any, config: OrchestrionConfig, report: Report) -> None:
        self.tiled, self.writer, self.config, self.report = tiled, writer, config, report

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.tiled(name, doc)
        if name == "start":
            self.report({"run": doc["uid"], "tiled": run_address(self.config, doc["uid"])})
            # The file is named at the start: the catalog records it while the run goes
            # on, not in the requests at its stop.
            path = self.writer.files.get(doc["uid"])
            if path is not None:
                self.tiled(HDF5_NOTICE, {"run": doc["uid"], "path": str(path)})

    def close(self) -> None:
        close = getattr(self.tiled, "close", None)
        if callable(close):
            close()
