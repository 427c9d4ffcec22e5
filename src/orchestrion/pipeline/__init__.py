"""The document pipeline: every callback a run's documents go through, in one place.

RunEngine -> run summaries -> (post-processing process) one per-run chain made by a
`RunRouter` (`build_post_processing`): `RunBundler` (one record per scan point, the
"bundled" stream) -> the HDF5 `Serializer` and the catalog's `RunCatalogWriter`.
Every RunEngine (CLI, shell, queue-server worker) subscribes `build_pipeline(config)`;
`build_post_processing(config, report)` is the chain after the hand-over, and reports
per run what it made durable (`RunOutcome`).
"""

from orchestrion.schema import BUNDLED, COMPLETE_KEY, POINT_KEY

from ._bundler import Bundler, RunBundler
from ._checks import DocumentError, RunChecks
from ._hdf5_files import DEFAULT_FILE_PREFIX, LIBVER, file_name_for
from ._hdf5_plugins import PLUGIN_GROUP, Hdf5Plugin, InstrumentPlugin, RunDocuments, load_plugins
from ._pipeline import DocumentPipeline, build_pipeline, build_post_processing, post_processing_imports
from ._post import PostProcessing, RunOutcome
from ._recovery import Recovered, recover_file, recover_incomplete, recover_orphans
from ._repair import RepairResult, repair_catalog
from ._serializer import FileOutcome, Serializer
from ._spool import discard_spool
from ._summary import RunSummary, RunSummaryCollector
from ._tiled import (
    CatalogConnection,
    CatalogOutcome,
    RunCatalogWriter,
    connect_catalog,
    embedded_catalog_paths,
    how_to_open,
    open_embedded_catalog,
)

__all__ = [
    "BUNDLED",
    "COMPLETE_KEY",
    "DEFAULT_FILE_PREFIX",
    "LIBVER",
    "PLUGIN_GROUP",
    "POINT_KEY",
    "Bundler",
    "CatalogConnection",
    "CatalogOutcome",
    "DocumentError",
    "DocumentPipeline",
    "FileOutcome",
    "Hdf5Plugin",
    "InstrumentPlugin",
    "PostProcessing",
    "Recovered",
    "RepairResult",
    "RunBundler",
    "RunCatalogWriter",
    "RunChecks",
    "RunDocuments",
    "RunOutcome",
    "RunSummary",
    "RunSummaryCollector",
    "Serializer",
    "build_pipeline",
    "build_post_processing",
    "connect_catalog",
    "discard_spool",
    "embedded_catalog_paths",
    "file_name_for",
    "how_to_open",
    "load_plugins",
    "open_embedded_catalog",
    "post_processing_imports",
    "recover_file",
    "recover_incomplete",
    "recover_orphans",
    "repair_catalog",
]
