"""What the bus records of each run's post-processing, in the run's state hash."""

from __future__ import annotations

from typing import Any

from ._connection import RedisClient

# The run's status, as the workers move it on.
ANNOUNCED = "announced"  # its start is on the bus
PROCESSING = "processing"  # a worker is writing it
CATALOG_PENDING = "catalog-pending"  # its file is written; the catalog could not be completed yet
DONE = "done"  # file closed, catalog entry complete: acknowledged
FAILED = "failed"  # its file could not be written; its documents wait on the bus for `replay`
INCOMPLETE = "incomplete"  # its RunEngine went away before the stop; written as far as it went
REPLAY = "replay"  # asked to be written again

FINAL = (DONE, FAILED, INCOMPLETE)


def read_state(client: RedisClient, key: str) -> dict[str, str]:
    """The state hash at ``key`` as text."""
    raw: dict[Any, Any] = client.hgetall(key)
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
