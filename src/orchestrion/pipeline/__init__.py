"""The document pipeline: every callback a run's documents go through, in one place.

Both ways to run (embedded, services) subscribe the same pipeline; the bundler, the
HDF5 writer and the Tiled catalog join it here.
"""

from ._pipeline import DocumentPipeline, build_pipeline
from ._summary import RunSummary, RunSummaryCollector

__all__ = ["DocumentPipeline", "RunSummary", "RunSummaryCollector", "build_pipeline"]
