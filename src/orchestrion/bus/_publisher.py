"""The RunEngine's side of the bus: every document of every run into Redis Streams.

The RunEngine calls subscribers synchronously, so `BusPublisher.__call__` only queues
the document; a feeder thread encodes the queue and writes it to Redis in pipelined
batches (one round trip, and one fsync of Redis's append-only file, per batch).  A run's
stop document returns only once every document of the run is in Redis: from then on the
run no longer depends on this process.  While Redis is unreachable the feeder retries
and the RunEngine goes on, with documents buffered here up to ``bus_buffer_documents``;
beyond that, and at a stop, the RunEngine waits for Redis.  Resending a batch after a
lost reply adds nothing twice: each document has a fixed id in its run's stream.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from orchestrion.config import OrchestrionConfig

from ._codec import encode
from ._connection import RedisClient, connect
from ._keys import DOC_FIELD, NAME_FIELD, RUN_FIELD, BusKeys, entry_id
from ._state import CATALOG_PENDING, DONE, FINAL, read_state

logger = logging.getLogger(__name__)

BATCH = 256  # documents per pipelined write
INTERVAL = 0.1  # s: longest an event waits in the queue before it is written
HEARTBEAT = 2.0  # s between the publisher's heartbeats
HEARTBEAT_TTL = 15  # s: a publisher silent this long is gone (its open runs end incomplete)
HANDOVER_TIMEOUT = 3600.0  # s: longest a stop document waits for Redis

# Adds one document at its fixed id; a start also announces the run, once: a resent
# start whose id is already taken announces nothing.
_ADD = """
local added = redis.pcall('XADD', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if type(added) == 'table' and added['err'] then return 0 end
if ARGV[3] == 'start' then
  redis.call('HSET', KEYS[3], 'status', 'announced', 'publisher', ARGV[6], 'published', ARGV[7])
  redis.call('XADD', KEYS[2], '*', ARGV[8], ARGV[9])
elseif ARGV[3] == 'stop' then
  redis.call('HSET', KEYS[3], 'stopped', ARGV[1])
end
return 1
"""

Note = dict[str, Any]


class BusPublisher:
    """A RunEngine callback that publishes each run's documents, in order, on the bus.

    Also the pipeline's catalog stage: `wait_catalogued` waits until a worker has
    written the run (HDF5 file closed, catalog entry complete) and passes what it
    reported (``{"run", "hdf5"}``, ``{"run", "tiled"}``, ``{"run", "outcome"}``) to ``on_note``.
    """

    def __init__(
        self,
        config: OrchestrionConfig,
        *,
        keys: BusKeys | None = None,
        on_note: Callable[[Note], Any] | None = None,
        client: RedisClient | None = None,
    ) -> None:
        self.keys = keys or BusKeys()
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._client = client or connect(config)
        self._on_note = on_note
        self._limit = config.bus_buffer_documents
        self._add = self._client.register_script(_ADD)
        self._state = threading.Condition()
        self._queue: deque[tuple[str, int, str, dict[str, Any]]] = deque()
        self._sequence: dict[str, int] = {}  # run uid -> documents queued
        self._written: dict[str, int] = {}  # run uid -> documents in Redis
        self._run_of: dict[str, str] = {}  # descriptor or resource uid -> run uid
        self._closing = False
        self._unreachable_since: float | None = None
        self._feeder = threading.Thread(target=self._feed, name="orchestrion-bus-publisher", daemon=True)
        self._feeder.start()

    # -- the RunEngine's side -----------------------------------------------------------

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        run_uid = self._run(name, doc)
        if run_uid is None:
            logger.warning("bus: a %s document of no known run is not published", name)
            return
        with self._state:
            while len(self._queue) >= self._limit and not self._closing:
                self._state.wait(timeout=1.0)  # Redis has been away for long: the RunEngine waits
            sequence = self._sequence.get(run_uid, 0) + 1
            self._sequence[run_uid] = sequence
            self._queue.append((run_uid, sequence, name, doc))
            if name not in ("event", "event_page", "datum", "datum_page") or len(self._queue) % BATCH == 0:
                self._state.notify_all()
        if name == "stop":
            self._wait_written(run_uid, sequence)

    def _run(self, name: str, doc: dict[str, Any]) -> str | None:
        if name == "start":
            return str(doc["uid"])
        if name in ("descriptor", "resource"):
            run_uid = str(doc["run_start"])
            self._run_of[str(doc["uid"])] = run_uid
            return run_uid
        if name in ("event", "event_page"):
            return self._run_of.get(str(doc.get("descriptor")))
        if name in ("datum", "datum_page"):
            return self._run_of.get(str(doc.get("resource")))
        if name in ("stream_resource",):
            return str(doc.get("run_start") or "") or None
        if name == "stop":
            run_uid = str(doc["run_start"])
            self._run_of = {k: v for k, v in self._run_of.items() if v != run_uid}
            return run_uid
        return None

    def _wait_written(self, run_uid: str, sequence: int) -> None:
        deadline = time.monotonic() + HANDOVER_TIMEOUT
        with self._state:
            while self._written.get(run_uid, 0) < sequence:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bus: run {run_uid} could not be written to Redis in {HANDOVER_TIMEOUT:.0f} s")
                self._state.wait(timeout=1.0)
            del self._written[run_uid]
            self._sequence.pop(run_uid, None)

    # -- the feeder thread ----------------------------------------------------------------

    def _feed(self) -> None:
        last_beat = 0.0
        while True:
            with self._state:
                if not self._queue and not self._closing:
                    self._state.wait(timeout=INTERVAL)
                batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
                closing = self._closing
            if batch:
                self._write(batch)
                with self._state:
                    for _ in batch:
                        self._queue.popleft()
                    for run_uid, sequence, _name, _doc in batch:
                        self._written[run_uid] = max(self._written.get(run_uid, 0), sequence)
                    self._state.notify_all()
            now = time.monotonic()
            if now - last_beat > HEARTBEAT:
                try:
                    self._client.set(self.keys.publisher(self.id), b"1", ex=HEARTBEAT_TTL)
                    last_beat = now
                except redis.RedisError:
                    pass  # `_write` reports an unreachable Redis
            if closing and not batch:
                return

    def _write(self, batch: list[tuple[str, int, str, dict[str, Any]]]) -> None:
        """Writes ``batch`` to Redis, retrying until it is there (ids make a resend harmless)."""
        encoded = [(run_uid, sequence, name, encode(doc)) for run_uid, sequence, name, doc in batch]
        delay = 0.05
        while True:
            try:
                pipe = self._client.pipeline(transaction=False)
                now = str(time.time())
                for run_uid, sequence, name, payload in encoded:
                    keys = [self.keys.run(run_uid), self.keys.runs, self.keys.state(run_uid)]
                    arguments = [entry_id(sequence), NAME_FIELD, name, DOC_FIELD, payload, self.id, now,
                                 RUN_FIELD, run_uid]  # fmt: skip
                    self._add(keys=keys, args=arguments, client=pipe)
                pipe.execute()
            except redis.RedisError as exc:  # unreachable, restarting, or unable to persist
                if self._unreachable_since is None:
                    self._unreachable_since = time.monotonic()
                    logger.warning("bus: Redis unreachable (%s); %d documents wait here", exc, len(self._queue))
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if self._unreachable_since is not None:
                logger.warning("bus: Redis is back after %.1f s", time.monotonic() - self._unreachable_since)
                self._unreachable_since = None
            return

    # -- the catalog stage ------------------------------------------------------------------

    def wait_catalogued(self, run_uid: str | None = None, timeout: float = 300.0) -> bool:
        """Wait until the workers have written ``run_uid`` (default: every run published).

        True once its HDF5 file is closed and its catalog entry complete; False (the
        reason logged) when a worker gave up on it, when its file is written but the
        catalog cannot be completed yet (the worker completes it later), or after
        ``timeout``.
        """
        deadline = time.monotonic() + timeout
        if run_uid is None:
            with self._state:
                while self._queue:
                    self._state.wait(timeout=0.2)
            return True
        while True:
            try:
                state = read_state(self._client, self.keys.state(run_uid))
            except redis.RedisError:
                state = {}
            status = state.get("status", "")
            # A run whose file is written but whose catalog entry waits for Tiled is
            # answered at once (False): a job must not wait on the catalog's outage.
            if status in FINAL or status == CATALOG_PENDING:
                self._report(run_uid, state)
                if status != DONE:
                    logger.error("bus: run %s was not written: %s", run_uid, state.get("reason", status))
                return bool(status == DONE)
            if time.monotonic() > deadline:
                logger.error("bus: run %s not written within %.0f s (%s)", run_uid, timeout, status or "not on the bus")
                return False
            time.sleep(0.02)

    def lost_runs(self) -> dict[str, str]:
        """Runs this process could not hand over: none, since a run's stop returns only
        once the whole run is on the bus (what a worker failed is in `wait_catalogued`)."""
        return {}

    def _report(self, run_uid: str, state: dict[str, str]) -> None:
        if self._on_note is None:
            return
        for key in ("hdf5", "tiled"):
            if state.get(key):
                self._on_note({"run": run_uid, key: state[key]})
        # What the worker read back, as the run's outcome (`RunSummary.take_outcome`): the
        # points durable in its file, and anything short of done is not all written.
        done = state.get("status") == DONE
        self._on_note({"run": run_uid, "outcome": {
            "status": "complete" if done else "incomplete",
            "points": json.loads(state["points"]) if state.get("points") else 0,
            "hdf5": state.get("hdf5") or None, "tiled": (state.get("tiled") or None) if done else None,
            "problems": [] if done else [state.get("reason") or f"post-processing: {state.get('status') or 'no word'}"],
        }})  # fmt: skip

    def close(self) -> None:
        """Write what is queued, then stop the feeder."""
        with self._state:
            self._closing = True
            self._state.notify_all()
        self._feeder.join(timeout=HANDOVER_TIMEOUT)
        self._client.close()
