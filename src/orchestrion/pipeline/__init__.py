"""The document pipeline: every callback a run's documents go through, in one place.

RunEngine -> run summaries -> (post-processing process) `Bundler` (one record per scan
point, the "bundled" stream) -> the HDF5 writer (`Hdf5Writer`, one `Serializer` per
run) and the Tiled catalog (`TiledSink`).  Every RunEngine (CLI, shell, queue-server
worker) subscribes `build_pipeline(config)`; `build_post_processing(config)` is the
chain after the hand-over.
"""

from orchestrion.schema import BUNDLED, COMPLETE_KEY, POINT_KEY

from ._bundler import Bundler
from ._checks import DocumentChecker, DocumentError
from ._guard import Guarded
from ._hdf5 import (
    DEFAULT_FILE_PREFIX,
    PLUGIN_GROUP,
    Hdf5Plugin,
    Hdf5Writer,
    InstrumentPlugin,
    RunDocuments,
    Serializer,
    file_name_for,
    load_plugins,
)
from ._pipeline import DocumentPipeline, build_pipeline, build_post_processing
from ._recovery import recover_file, recover_incomplete
from ._summary import RunSummary, RunSummaryCollector
from ._tiled import CatalogConnection, TiledSink, connect_catalog, open_embedded_catalog

__all__ = [
    "BUNDLED",
    "COMPLETE_KEY",
    "DEFAULT_FILE_PREFIX",
    "PLUGIN_GROUP",
    "POINT_KEY",
    "Bundler",
    "CatalogConnection",
    "DocumentChecker",
    "DocumentError",
    "DocumentPipeline",
    "Guarded",
    "Hdf5Plugin",
    "Hdf5Writer",
    "InstrumentPlugin",
    "RunDocuments",
    "RunSummary",
    "RunSummaryCollector",
    "Serializer",
    "TiledSink",
    "build_pipeline",
    "build_post_processing",
    "connect_catalog",
    "file_name_for",
    "load_plugins",
    "open_embedded_catalog",
    "recover_file",
    "recover_incomplete",
]
