"""Where the bus keeps things in Redis: one announcement stream, one stream per run.

The announcement stream (``runs``) gets one entry per run, added atomically with the
run's start document; consumer groups on it (post-processing, each connector) share
runs between their consumers.  A consumer group spreads entries across consumers, so a
run's documents live in a stream of their own (``run:UID``), read in order by the one
consumer that claimed the run.  Entry ids of a run stream are ``0-N``, N the document's
place in the run: a publisher that resends after a lost reply cannot add a document
twice (Redis refuses an id at or below the stream's last).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrion.schema import ANALYSIS

DEFAULT_PREFIX = "orchestrion:bus:"
POST_PROCESSING_GROUP = "post-processing"
CONNECTOR_GROUP_PREFIX = "connector:"

# Fields of a run stream entry and of an announcement.
NAME_FIELD = "n"
DOC_FIELD = "d"
RUN_FIELD = "run"


@dataclass(frozen=True)
class BusKeys:
    """The Redis keys of one bus (one stack), under ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    @property
    def runs(self) -> str:
        """The announcement stream: one entry ``{run: UID}`` per run."""
        return f"{self.prefix}runs"

    def run(self, run_uid: str) -> str:
        """The run's documents, in order, ids ``0-1``, ``0-2``, ..."""
        return f"{self.prefix}run:{run_uid}"

    def state(self, run_uid: str) -> str:
        """A hash: how far post-processing is with the run (status, worker, hdf5, tiled, reason)."""
        return f"{self.prefix}state:{run_uid}"

    def analysis(self, run_uid: str) -> str:
        """Results that live consumers publish back for the run."""
        return f"{self.prefix}run:{run_uid}:{ANALYSIS}"

    @property
    def failed(self) -> str:
        """A hash run uid -> reason: runs whose HDF5 file could not be written, kept for `replay`."""
        return f"{self.prefix}failed"

    def publisher(self, publisher_id: str) -> str:
        """Exists (with a time to live) while the publisher's process lives."""
        return f"{self.prefix}publisher:{publisher_id}"

    def worker(self, name: str) -> str:
        """A post-processing worker's heartbeat (JSON, with a time to live)."""
        return f"{self.prefix}worker:{name}"


def entry_id(sequence: int) -> str:
    """The run stream id of the run's ``sequence``-th document (from 1)."""
    return f"0-{sequence}"


def connector_group(name: str) -> str:
    return f"{CONNECTOR_GROUP_PREFIX}{name}"
