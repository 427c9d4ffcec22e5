"""The RunEngine's pipeline in services mode: run summaries and the bus publisher."""

from __future__ import annotations

from orchestrion.config import OrchestrionConfig
from orchestrion.pipeline import DocumentPipeline

from ._publisher import BusPublisher


def build_bus_pipeline(config: OrchestrionConfig) -> DocumentPipeline:
    """What a RunEngine subscribes when post-processing workers write its runs.

    The run summaries, and `BusPublisher`: every document into Redis Streams, a run's
    stop returning once the whole run is there.  ``wait_catalogued`` waits for a worker
    to have written the run, and the summaries then name its file and catalog node.
    """
    pipeline = DocumentPipeline()
    publisher = BusPublisher(config, on_note=pipeline.take_note)
    pipeline.catalog_stage = publisher
    # Not guarded: a document that cannot be handed to the bus (the publisher buffers and
    # waits while Redis is away) must fail the run, not be dropped in silence.
    pipeline.callbacks.append(publisher)
    return pipeline
