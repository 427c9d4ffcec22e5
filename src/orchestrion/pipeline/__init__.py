"""The document pipeline: every callback a run's documents go through, in one place.

RunEngine -> run summaries -> (post-processing process) one per-run chain made by a
`RunRouter` (`build_post_processing`): `RunBundler` (one record per scan point, the
"bundled" stream) -> the HDF5 `Serializer` and the catalog's `RunCatalogWriter`.
Every RunEngine (CLI, shell, queue-server worker) subscribes `build_pipeline(config)`;
`build_post_processing(config, report)` is the chain after the hand-over, and reports
per run what it made durable (`RunOutcome`).
"""

from typing import TYPE_CHECKING

from orchestrion._lazy import lazy_exports
from orchestrion.schema import BUNDLED, COMPLETE_KEY, POINT_KEY

if TYPE_CHECKING:
    from ._bundler import Bundler, RunBundler
    from ._checks import DocumentError, RunChecks
    from ._early import leave_standby, post_processing_imports, start_post_processing
    from ._hdf5_files import DEFAULT_FILE_PREFIX, LIBVER, file_name_for, make_durable
    from ._hdf5_plugins import PLUGIN_GROUP, Hdf5Plugin, InstrumentPlugin, RunDocuments, load_plugins
    from ._pipeline import DocumentPipeline, build_pipeline, build_post_processing
    from ._placing import RunPlacer
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
        readable_storage,
    )

# Imported when first used (`orchestrion._lazy`): a listing command must not pay for the
# stack behind the names it does not use (issue 16).
_EXPORTS = {
    "._bundler": ("Bundler", "RunBundler"),
    "._checks": ("DocumentError", "RunChecks"),
    "._early": ("leave_standby", "post_processing_imports", "start_post_processing"),
    "._hdf5_files": ("DEFAULT_FILE_PREFIX", "LIBVER", "file_name_for", "make_durable"),
    "._hdf5_plugins": ("PLUGIN_GROUP", "Hdf5Plugin", "InstrumentPlugin", "RunDocuments", "load_plugins"),
    "._pipeline": ("DocumentPipeline", "build_pipeline", "build_post_processing"),
    "._placing": ("RunPlacer",),
    "._post": ("PostProcessing", "RunOutcome"),
    "._recovery": ("Recovered", "recover_file", "recover_incomplete", "recover_orphans"),
    "._repair": ("RepairResult", "repair_catalog"),
    "._serializer": ("FileOutcome", "Serializer"),
    "._spool": ("discard_spool",),
    "._summary": ("RunSummary", "RunSummaryCollector"),
    "._tiled": (
        "CatalogConnection",
        "CatalogOutcome",
        "RunCatalogWriter",
        "connect_catalog",
        "embedded_catalog_paths",
        "how_to_open",
        "open_embedded_catalog",
        "readable_storage",
    ),
}
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

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
    "RunPlacer",
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
    "leave_standby",
    "load_plugins",
    "make_durable",
    "open_embedded_catalog",
    "post_processing_imports",
    "readable_storage",
    "recover_file",
    "recover_incomplete",
    "recover_orphans",
    "repair_catalog",
    "start_post_processing",
]
