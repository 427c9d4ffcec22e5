"""Claiming runs from the announcement stream as one consumer of a consumer group."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import redis

from ._connection import RedisClient
from ._keys import RUN_FIELD

logger = logging.getLogger(__name__)

# Touches the pending entries still delivered to this consumer (so nobody claims them as
# idle) and returns those: an id missing from the answer was taken by another consumer.
_TOUCH = """
local kept = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"""


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Claims:
    """``consumer`` of ``group`` on the announcement stream ``stream``: which run is next.

    An entry stays pending (delivered, not acknowledged) until `ack`; a consumer that
    stops touching its pending entries for ``claim_idle`` seconds loses them to another.
    """

    def __init__(self, client: RedisClient, stream: str, group: str, consumer: str, claim_idle: float) -> None:
        self.client, self.stream, self.group, self.consumer = client, stream, group, consumer
        self.claim_idle_ms = int(claim_idle * 1000)
        self._touch = client.register_script(_TOUCH)

    def ensure_group(self) -> None:
        """The group, reading the stream from its first entry (runs announced before it existed too)."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def next(self, block_ms: int, skip: Collection[str] = ()) -> tuple[str, str] | None:
        """(announcement id, run uid) of the next run to handle, or None after ``block_ms``.

        This consumer's own pending runs first (from before a restart under the same
        name; those in ``skip`` are being waited on), then a silent consumer's, then new.
        """
        mine = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=len(skip) + 1)
        for _stream, entries in mine or []:
            for raw_id, fields in entries:
                if text(raw_id) not in skip:
                    return self._entry(raw_id, fields)
        claimed = self.client.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=1)
        if claimed[1]:
            raw_id, fields = claimed[1][0]
            logger.warning("%s: took over run %s from a silent consumer of %s", self.consumer,
                           text(fields.get(RUN_FIELD.encode())), self.group)  # fmt: skip
            return self._entry(raw_id, fields)
        new = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=1, block=block_ms)
        for _stream, entries in new or []:
            for raw_id, fields in entries:
                return self._entry(raw_id, fields)
        return None

    def touch(self, ids: Collection[str]) -> set[str]:
        """Reset the idle time of ``ids``; those still this consumer's."""
        if not ids:
            return set()
        kept = self._touch(keys=[self.stream], args=[self.group, self.consumer, *ids])
        return {text(i) for i in kept}

    def ack(self, announcement: str) -> None:
        self.client.xack(self.stream, self.group, announcement)

    @staticmethod
    def _entry(raw_id: Any, fields: dict[bytes, bytes]) -> tuple[str, str]:
        return text(raw_id), text(fields.get(RUN_FIELD.encode(), b""))
