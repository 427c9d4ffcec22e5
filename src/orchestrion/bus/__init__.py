"""The document bus: every document of every run on Redis Streams, durable and in order.

- `BusPublisher`: the RunEngine's callback (`build_bus_pipeline` wires it with the run
  summaries); a run's stop returns once all of the run is in Redis.
- `BusWorker` (``python -m orchestrion.bus worker --name NAME``): post-processing as a
  service; workers share runs through a consumer group, each run written by one worker
  at a time in document order through `orchestrion.pipeline.build_post_processing`.
- `Follower`: live consumers (plots, fits, external analysis) follow runs, raw or
  bundled, from their start; results go back with `Follower.publish_analysis`.
- Connectors (`LogbookConnector`, entry-point group ``orchestrion.bus_connectors``).
- `replay`: write again the runs whose files could not be written (a full disk).

See docs/decisions/0600-document-bus-on-redis-streams.md.
"""

from ._connection import bus_redis_url, connect
from ._connectors import CONNECTOR_ENTRY_POINTS, ConnectorRunner, LogbookConnector, load_connectors
from ._follow import Follower, RunNotOnBus
from ._keys import POST_PROCESSING_GROUP, BusKeys, connector_group
from ._pipeline import build_bus_pipeline
from ._publisher import BusPublisher, outcome_of
from ._state import CATALOG_PENDING, DONE, FAILED, INCOMPLETE, PROCESSING, read_state
from ._worker import BusWorker, replay

__all__ = [
    "CATALOG_PENDING",
    "CONNECTOR_ENTRY_POINTS",
    "DONE",
    "FAILED",
    "INCOMPLETE",
    "POST_PROCESSING_GROUP",
    "PROCESSING",
    "BusKeys",
    "BusPublisher",
    "BusWorker",
    "ConnectorRunner",
    "Follower",
    "LogbookConnector",
    "RunNotOnBus",
    "build_bus_pipeline",
    "bus_redis_url",
    "connect",
    "connector_group",
    "load_connectors",
    "outcome_of",
    "read_state",
    "replay",
]
