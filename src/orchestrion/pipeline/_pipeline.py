"""Assembling the callback chain that a RunEngine's documents flow through."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig

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
        # The catalog stage, when it finishes runs after their stop document (see
        # `wait_catalogued`).
        self.catalog_stage: CatalogStage | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.summaries(name, doc)
        for callback in self.callbacks:
            callback(name, doc)

    def wait_catalogued(self, run_uid: str | None = None, timeout: float = 300.0) -> bool:
        """Wait until ``run_uid`` (default: every run so far) is complete in the catalog.

        The RunEngine does not wait for the catalog at a run's stop: call this before
        reading a run back.  False (and the reason logged) if it did not get there.
        """
        if self.catalog_stage is None:
            return True
        return self.catalog_stage.wait_catalogued(run_uid, timeout)

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
    """The pipeline the configuration asks for: bundler, then HDF5 files and Tiled.

    Documents go RunEngine -> bundler -> (HDF5 writer, Tiled); the bundler passes every
    document on and adds the "bundled" stream.  Files whose writer died in an earlier
    process are recovered first.  The pipeline is a plain ``(name, doc)`` callable, so
    any transport (a RunEngine subscription, a queue-server worker, a message bus) can
    feed it.  Each stage is guarded: its failure on one run is logged with the run uid
    and does not stop the run or the other stages.
    """
    from ._bundler import BUNDLED, Bundler
    from ._guard import Guarded
    from ._hdf5 import Hdf5Writer
    from ._recovery import recover_incomplete

    pipeline = DocumentPipeline()
    recover_incomplete(config.data_dir)

    def on_file(run_uid: str, path: Path) -> None:
        summary = pipeline.summaries.runs.get(run_uid)
        if summary is not None:
            summary.hdf5 = str(path)

    writer = Hdf5Writer(
        config.data_dir,
        on_file=on_file,
        file_prefix=config.hdf5_file_prefix,
        data_stream=BUNDLED,
        skip_streams=("primary",),  # every primary reading is in the bundled points
        buffer_points=config.hdf5_buffer_points,
        flush_interval=config.hdf5_flush_interval,
    )
    sinks: list[DocumentCallback] = [Guarded(writer, "HDF5 writer")]
    if config.tiled_enabled:
        from ._offload import ProcessSink, ThreadedSink
        from ._tiled import TiledSink, connect_catalog, make_tiled_sink

        # Off the RunEngine's thread: the embedded catalog in a helper process (its
        # server side would otherwise share this interpreter), a served one in a thread
        # (HTTP waits).  The thread waits at each stop until the run is catalogued (a
        # queue-server job is reported done only then); the helper process finishes a
        # run while the next one starts (see `DocumentPipeline.wait_catalogued`).
        tiled: CatalogStage
        if config.tiled_uri:
            tiled = ThreadedSink(
                Guarded(TiledSink(connect_catalog(config), batch_size=config.tiled_batch_size), "Tiled writer"),
                "Tiled writer",
            )
        else:
            tiled = ProcessSink(make_tiled_sink, config, "Tiled writer")

        pipeline.catalog_stage = tiled
        sinks.append(Guarded(_TiledFeed(tiled, pipeline, writer, config), "Tiled writer"))
    pipeline.callbacks.append(Guarded(Bundler(sinks), "bundler"))
    return pipeline


class _TiledFeed:
    """Hands documents to the Tiled stage; tells the summary and the stage where things are."""

    def __init__(
        self, tiled: DocumentCallback, pipeline: DocumentPipeline, writer: Any, config: OrchestrionConfig
    ) -> None:
        self.tiled, self.pipeline, self.writer, self.config = tiled, pipeline, writer, config

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.tiled(name, doc)
        if name == "start":
            summary = self.pipeline.summaries.runs.get(doc["uid"])
            if summary is not None:
                summary.tiled = run_address(self.config, doc["uid"])
            # The file is named at the start: the catalog records it while the run goes
            # on, not in the requests at its stop.
            path = self.writer.files.get(doc["uid"])
            if path is not None:
                self.tiled(HDF5_NOTICE, {"run": doc["uid"], "path": str(path)})

    def close(self) -> None:
        close = getattr(self.tiled, "close", None)
        if callable(close):
            close()
