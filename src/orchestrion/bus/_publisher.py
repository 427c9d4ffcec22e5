"""The RunEngine's side of the bus: every document of every run into Redis Streams.

The RunEngine calls subscribers synchronously, so `BusPublisher.__call__` only queues
the document; a feeder thread encodes the queue and writes it to Redis in pipelined
batches (one round trip, and one fsync of Redis's append-only file, per batch).  A run's
stop document returns only once every document of the run is in Redis: from then on the
run no longer depends on this process.  While Redis is unreachable the feeder retries
and the RunEngine goes on, with documents buffered here up to ``bus_buffer_documents``;
beyond that, and at a stop, the RunEngine waits for Redis.  Resending a batch after a
lost reply adds nothing twice: each document has a fixed id in its run's stream.

What "handed over" means, precisely: a run is handed over when its stop document's
call returns, and not before.  By then Redis has answered every write of the run, and
with the stack's ``appendfsync always`` an answered write is in its append-only file.
An earlier document is only queued in this process when its call returns, for at most
``INTERVAL`` seconds or one ``BATCH`` while Redis answers.  If this process dies
first, those documents are lost together with the RunEngine that made them.  The run
cannot stop normally then anyway: a worker writes what reached the bus and records
the run ``incomplete`` once this publisher's heartbeat expires.
"""

from __future__ import annotations

import itertools
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
from orchestrion.pipeline import RunPlacer

from ._codec import encode
from ._connection import RedisClient, connect
from ._keys import DOC_FIELD, NAME_FIELD, RUN_FIELD, BusKeys, entry_id
from ._state import CATALOG_PENDING, DONE, FINAL, INCOMPLETE, read_state

logger = logging.getLogger(__name__)

BATCH = 256  # documents per pipelined write
INTERVAL = 0.1  # s: longest an event waits in the queue before it is written
HEARTBEAT = 2.0  # s between the publisher's heartbeats
HEARTBEAT_TTL = 15  # s: a publisher silent this long is gone (its open runs end incomplete)
HANDOVER_TIMEOUT = 3600.0  # s: longest a stop document waits for Redis

# Adds consecutive documents of one run, each at its fixed id.  ARGV: publisher, time,
# run uid, the three field names (`_keys`), then (id, name, payload) per document.  A
# start also announces the run, once: a resent document whose id is already taken adds
# and announces nothing.  One call per run per batch: a call per document cost the
# publisher's process 27 us of CPU per document, this 11 us.
_ADD = """
local added = 0
for i = 7, #ARGV, 3 do
  local ok = redis.pcall('XADD', KEYS[1], ARGV[i], ARGV[4], ARGV[i + 1], ARGV[5], ARGV[i + 2])
  if not (type(ok) == 'table' and ok['err']) then
    added = added + 1
    if ARGV[i + 1] == 'start' then
      redis.call('HSET', KEYS[3], 'status', 'announced', 'publisher', ARGV[1], 'published', ARGV[2])
      redis.call('XADD', KEYS[2], '*', ARGV[6], ARGV[3])
    elseif ARGV[i + 1] == 'stop' then
      redis.call('HSET', KEYS[3], 'stopped', ARGV[i])
    end
  end
end
return added
"""

Note = dict[str, Any]


# Documents that come once per point: the feeder is woken for them only every BATCH.
BATCHED = ("event", "event_page", "datum", "datum_page", "stream_datum")


class BusPublisher:
    """A RunEngine callback that publishes each run's documents, in order, on the bus.

    Also the pipeline's catalog stage: `wait_catalogued` waits until a worker has
    written the run (HDF5 file closed, catalog entry complete) and passes what it
    reported to ``on_note`` as the embedded pipeline's helper does: ``{"run", "hdf5"}``,
    ``{"run", "tiled"}``, then ``{"run", "outcome"}``, the `RunOutcome` the worker read
    back and decided on (`outcome` gives it too).
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
        self._placer = RunPlacer()  # which run each document is of
        self._closing = False
        self._unreachable_since: float | None = None
        self._feeder = threading.Thread(target=self._feed, name="orchestrion-bus-publisher", daemon=True)
        self._feeder.start()

    # -- the RunEngine's side -----------------------------------------------------------

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        run_uid = self._placer.place(name, doc)
        if run_uid is None:
            logger.warning("bus: a %s document of no known run is not published", name)
            return
        with self._state:
            while len(self._queue) >= self._limit and not self._closing:
                self._state.wait(timeout=1.0)  # Redis has been away for long: the RunEngine waits
            sequence = self._sequence.get(run_uid, 0) + 1
            self._sequence[run_uid] = sequence
            self._queue.append((run_uid, sequence, name, doc))
            if name not in BATCHED or len(self._queue) % BATCH == 0:
                self._state.notify_all()
        if name == "stop":
            self._wait_written(run_uid, sequence)

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
                for run_uid, group in itertools.groupby(encoded, key=lambda item: item[0]):
                    keys = [self.keys.run(run_uid), self.keys.runs, self.keys.state(run_uid)]
                    arguments: list[Any] = [self.id, now, run_uid, NAME_FIELD, DOC_FIELD, RUN_FIELD]
                    for _run, sequence, name, payload in group:
                        arguments += [entry_id(sequence), name, payload]
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

    def catalog_pending(self, run_uid: str) -> bool:
        """True while the run's file is written and its catalog entry waits for Tiled (the
        workers complete it once Tiled answers)."""
        try:
            return read_state(self._client, self.keys.state(run_uid)).get("status") == CATALOG_PENDING
        except redis.RedisError:
            return False

    def lost_runs(self) -> dict[str, str]:
        """Runs this process could not hand over: none, since a run's stop returns only
        once the whole run is on the bus (what a worker failed is in `wait_catalogued`)."""
        return {}

    def outcome(self, run_uid: str) -> dict[str, Any] | None:
        """The run's outcome as the worker that wrote it read it back (`RunOutcome.to_dict`),
        once it has decided on the run (written, failed, incomplete, or its file written and
        its catalog entry pending); None before, or when Redis cannot be read."""
        try:
            state = read_state(self._client, self.keys.state(run_uid))
        except redis.RedisError:
            return None
        status = state.get("status", "")
        return outcome_of(run_uid, state) if status in FINAL or status == CATALOG_PENDING else None

    def _report(self, run_uid: str, state: dict[str, str]) -> None:
        if self._on_note is None:
            return
        for key in ("hdf5", "tiled"):
            if state.get(key):
                self._on_note({"run": run_uid, key: state[key]})
        self._on_note({"run": run_uid, "outcome": outcome_of(run_uid, state)})

    def close(self) -> None:
        """Write what is queued, then stop the feeder."""
        with self._state:
            self._closing = True
            self._state.notify_all()
        self._feeder.join(timeout=HANDOVER_TIMEOUT)
        self._client.close()


def outcome_of(run_uid: str, state: dict[str, str]) -> dict[str, Any]:
    """The outcome a worker recorded in a run's state hash; one shaped like it (nothing
    durable, the state's reason as the problem) for a run decided without one."""
    if state.get("outcome"):
        outcome: dict[str, Any] = json.loads(state["outcome"])
        if state.get("status") == INCOMPLETE and outcome.get("status") != "incomplete":
            outcome["status"] = "incomplete"
        return outcome
    reason = state.get("reason") or f"the run is {state.get('status') or 'not on the bus'}"
    return {"run": run_uid, "status": "incomplete", "points": int(state.get("points") or 0), "bundled": None,
            "hdf5": state.get("hdf5") or None, "tiled": None, "catalog_rows": None, "exit_status": None,
            "problems": [reason], "spool": None, "file_complete": False, "catalog_complete": None}  # fmt: skip
