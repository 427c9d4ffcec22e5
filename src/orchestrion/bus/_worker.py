"""Post-processing workers: each run from the bus through `build_post_processing`.

A worker claims a run from the announcement stream's consumer group, reads the run's
stream in order into a fresh post-processing chain (bundler -> HDF5 -> Tiled), and
decides on the run from what the chain read back of it (`RunOutcome`, ADR 0207): it
acknowledges the run only when its HDF5 file is closed with its final status and every
bundled point, and its catalog entry holds the stop and every point (ADR 0610).  The
outcome goes into the run's state hash, for the RunEngine's side to report.  While it works it touches the
run's pending entry; a worker that stops touching (killed, hung, its machine gone) has
its runs taken by another worker after ``bus_claim_idle`` seconds (XAUTOCLAIM), and a
worker restarted under the same name takes its own first.  A run written again first
loses what the previous attempt left: its HDF5 file and its catalog node.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import redis

from orchestrion.config import OrchestrionConfig
from orchestrion.pipeline import (
    build_post_processing,
    connect_catalog,
    discard_spool,
    file_name_for,
    post_processing_imports,
    recover_incomplete,
)

from ._claims import Claims
from ._claims import text as _text
from ._codec import decode
from ._connection import RedisClient, connect
from ._keys import DOC_FIELD, NAME_FIELD, POST_PROCESSING_GROUP, RUN_FIELD, BusKeys, entry_id
from ._state import (
    CATALOG_PENDING,
    DONE,
    FAILED,
    FINAL,
    INCOMPLETE,
    PROCESSING,
    REPLAY,
    read_state,
)  # fmt: skip

logger = logging.getLogger(__name__)

READ_COUNT = 500  # documents read from a run's stream at once
READ_BLOCK_MS = 500
STATE_TTL = 86_400  # s a finished run's state stays readable (`wait_catalogued`, `status`)
CATALOG_RETRY = (2.0, 60.0)  # s: first and longest wait before writing a catalog-pending run again
MAX_UNFINISHED = 3  # attempts at a run that ended with their worker, before the run waits for `replay`

Chain = Callable[[str, dict[str, Any]], Any]


def _stream_id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


class _Errors(logging.Handler):
    """The first error the chain logs while it writes a run: the reason a run failed.

    Also kept in the run's state at once, in case the error takes the worker with it.
    """

    def __init__(self, client: RedisClient, state_key: str) -> None:
        super().__init__(logging.ERROR)
        self.first: str | None = None
        self._client, self._state_key = client, state_key

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text = f"{text}: {type(exc).__name__}: {exc}"
            self.first = text
            with contextlib.suppress(redis.RedisError):
                self._client.hset(self._state_key, "last_error", text[:2000])


class BusWorker:
    """One post-processing worker, named ``name`` (its consumer name in the group)."""

    def __init__(
        self, config: OrchestrionConfig, name: str, *, keys: BusKeys | None = None, client: RedisClient | None = None
    ) -> None:
        self.config = config
        self.name = name
        self.keys = keys or BusKeys()
        self.client = client or connect(config)
        self.claims = Claims(self.client, self.keys.runs, POST_PROCESSING_GROUP, name, config.bus_claim_idle)
        self._held: dict[str, tuple[str, float, int]] = {}  # entry id -> (run uid, retry at, attempts)
        self._notes: dict[str, str] = {}
        self._outcome: dict[str, Any] | None = None  # what the chain read back of the run being written
        self._stopping = threading.Event()
        self._current: str | None = None  # the announcement of the run being written
        self._ready = False  # the chain has been built once (imports done)
        self._lost: set[str] = set()  # announcements another worker has taken
        self._owned_lock = threading.Lock()
        self._heart = threading.Thread(target=self._heartbeat, name=f"orchestrion-{name}-heartbeat", daemon=True)

    # -- the loop ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Process runs until `stop`; a Redis that goes away is waited for."""
        self._heart.start()
        self._warm_up()
        delay = 0.1
        while not self._stopping.is_set():
            try:
                self.ensure_group()
                self.poll()
                delay = 0.1
            except redis.RedisError as exc:
                logger.warning("%s: Redis: %s; retrying in %.1f s", self.name, exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 2.0)

    def stop(self) -> None:
        self._stopping.set()

    def ensure_group(self) -> None:
        self.claims.ensure_group()

    def poll(self, block_ms: int = 1000) -> bool:
        """Process the next run there is, if any (waiting up to ``block_ms``); True if one was."""
        entry = self.claims.next(block_ms, skip=set(self._held))
        if entry is not None:
            self.process(*entry)
            return True
        self._retry_held()
        return False

    def _ack(self, announcement: str) -> None:
        self.claims.ack(announcement)
        with self._owned_lock:
            self._held.pop(announcement, None)
        self.trim()

    # -- one run --------------------------------------------------------------------------------

    def process(self, announcement: str, run_uid: str) -> str:
        """Write run ``run_uid`` (announced at ``announcement``); its status afterwards."""
        state_key = self.keys.state(run_uid)
        state = read_state(self.client, state_key)
        status = state.get("status", "")
        if status in FINAL or not self.client.exists(self.keys.run(run_uid)):
            # Written already (a repeated announcement), or failed and waiting for `replay`.
            self._ack(announcement)
            return status or "gone"
        unfinished = int(state.get("unfinished") or 0)
        if unfinished >= MAX_UNFINISHED:
            # Each attempt took its worker down (a crash in a library, a machine out of
            # memory): the run waits for `replay` rather than taking every worker down.
            reason = (f"post-processing stopped {unfinished} times while writing this run; last error: "
                      f"{state.get('last_error') or 'none logged'}")  # fmt: skip
            self.client.hset(state_key, mapping=self._recorded(unwritten_outcome(run_uid, reason, state.get("hdf5"))))
            self._fail(announcement, run_uid, reason)
            return FAILED
        if state.get("attempt"):
            previous = state.get("worker", "")
            if previous and previous != self.name:
                self._wait_released(previous, announcement, run_uid)
            self._discard(run_uid, state)
        attempt = int(state.get("attempt") or 0) + 1
        self.client.hdel(state_key, "hdf5", "tiled", "reason", "points", "outcome")
        self.client.hset(state_key, mapping={"status": PROCESSING, "worker": self.name, "attempt": attempt,
                                             "unfinished": unfinished + 1})  # fmt: skip
        logger.info("%s: writing run %s (attempt %d)", self.name, run_uid, attempt)
        with self._owned_lock:
            self._current, self._notes, self._outcome = announcement, {}, None
            self._lost.discard(announcement)
        errors = _Errors(self.client, state_key)
        watched = logging.getLogger("orchestrion.pipeline")
        watched.addHandler(errors)
        try:
            chain = build_post_processing(self.config, self._note)
            try:
                outcome = self._feed(run_uid, announcement, state.get("publisher", ""), chain)
            finally:
                close = getattr(chain, "close", None)
                if callable(close):
                    close()
        finally:
            watched.removeHandler(errors)
            with self._owned_lock:
                self._current = None
        if outcome == "lost":
            logger.warning("%s: run %s was taken over by another worker; it writes it", self.name, run_uid)
            return "lost"
        if outcome == "interrupted":
            logger.warning("%s: stopped while writing run %s; it stays on the bus", self.name, run_uid)
            return "interrupted"
        return self._conclude(announcement, run_uid, outcome, errors.first, attempt)

    def _note(self, note: dict[str, Any]) -> None:
        # Kept here and written with the next batch: a Redis error must not reach the chain.
        for key in ("hdf5", "tiled"):
            if key in note:
                self._notes[key] = str(note[key])
        if "outcome" in note:
            self._outcome = dict(note["outcome"])

    def _feed(self, run_uid: str, announcement: str, publisher: str, chain: Chain) -> str:
        """The run's documents, in order, into ``chain``: "stopped", "abandoned", "lost" or "interrupted"."""
        last, stream, silent_since = "0-0", self.keys.run(run_uid), time.monotonic()
        while True:
            if announcement in self._lost:
                return "lost"
            if self._stopping.is_set():
                return "interrupted"  # pending still: the next worker writes it from its start
            try:
                answer = self.client.xread({stream: last}, count=READ_COUNT, block=READ_BLOCK_MS)
                if self._notes:
                    self.client.hset(self.keys.state(run_uid), mapping=dict(self._notes))
            except redis.RedisError as exc:
                logger.warning("%s: Redis: %s; run %s waits", self.name, exc, run_uid)
                self._stopping.wait(0.5)
                silent_since = time.monotonic()
                continue
            if not answer:
                # No document for a while: has the RunEngine's process gone (its heartbeat
                # expired) before the run's stop?
                if time.monotonic() - silent_since > 1.0 and publisher:
                    try:
                        alive = self.client.exists(self.keys.publisher(publisher))
                    except redis.RedisError:
                        alive = True
                    if not alive:
                        return "abandoned"
                continue
            silent_since = time.monotonic()
            for raw_id, fields in answer[0][1]:
                last = _text(raw_id)
                name = _text(fields[NAME_FIELD.encode()])
                chain(name, decode(fields[DOC_FIELD.encode()]))
                if name == "stop":
                    return "stopped"

    def _conclude(self, announcement: str, run_uid: str, ending: str, error: str | None, attempt: int) -> str:
        """Decide on the run from its outcome as the chain read it back (`RunOutcome`)."""
        state_key = self.keys.state(run_uid)
        outcome = self._outcome
        if outcome is None:  # the chain reports once per run; without it nothing is known written
            reason = error or "post-processing reported no outcome of the run"
            outcome = unwritten_outcome(run_uid, reason, self._notes.get("hdf5"))
        self.client.hset(state_key, mapping={"unfinished": 0, **self._recorded(outcome)})
        problems = "; ".join(str(p) for p in outcome.get("problems") or [])
        if ending == "abandoned":
            reason = "the RunEngine's process went away before the run's stop"
            self.client.hset(state_key, mapping={"status": INCOMPLETE, "reason": reason})
            self._ack(announcement)
            logger.error("%s: run %s written as incomplete: %s", self.name, run_uid, reason)
            return INCOMPLETE
        if not outcome.get("file_complete"):
            self._fail(announcement, run_uid, error or problems or "its HDF5 file was not completed")
            return FAILED
        if outcome.get("catalog_complete") is False:
            previous = self._held.get(announcement)
            tries = previous[2] + 1 if previous else 1
            wait = min(CATALOG_RETRY[0] * 2 ** (tries - 1), CATALOG_RETRY[1])
            with self._owned_lock:
                self._held[announcement] = (run_uid, time.monotonic() + wait, tries)
            self.client.hset(state_key, mapping={"status": CATALOG_PENDING, "reason": problems or "catalog incomplete"})
            logger.warning("%s: run %s: HDF5 written; catalog not complete (%s); retrying", self.name,
                           run_uid, problems)  # fmt: skip
            return CATALOG_PENDING
        self.client.hset(state_key, "status", DONE)
        self.client.hdel(state_key, "reason")
        self._ack(announcement)
        logger.info("%s: run %s written (%d points, attempt %d)", self.name, run_uid, outcome["points"], attempt)
        return DONE

    @staticmethod
    def _recorded(outcome: dict[str, Any]) -> dict[str, Any]:
        """The state hash's fields from the outcome: what the RunEngine's side reports."""
        fields: dict[str, Any] = {"points": int(outcome.get("points") or 0), "outcome": json.dumps(outcome)}
        for key in ("hdf5", "tiled"):
            if outcome.get(key):
                fields[key] = str(outcome[key])
        return fields

    def _fail(self, announcement: str, run_uid: str, reason: str) -> None:
        self.client.hset(self.keys.state(run_uid), mapping={"status": FAILED, "reason": reason})
        self.client.hset(self.keys.failed, run_uid, reason)
        self._ack(announcement)  # the documents stay on the bus: `replay` writes them
        logger.error("%s: run %s could not be written: %s (kept on the bus; replay it)", self.name, run_uid, reason)

    def _wait_released(self, previous: str, announcement: str, run_uid: str) -> None:
        """Wait until worker ``previous`` no longer writes the run (it learns it lost it
        at its next heartbeat, and closes its file), or has gone silent."""

        def released() -> bool:
            beat = self.client.get(self.keys.worker(previous))
            return beat is None or json.loads(beat).get("run") != announcement

        deadline = time.monotonic() + 4 * self.config.bus_claim_idle
        while not released():
            if time.monotonic() > deadline:
                logger.warning("%s: run %s: worker %s still names it; writing it all the same", self.name,
                               run_uid, previous)  # fmt: skip
                return
            self._stopping.wait(0.05)

    def _discard(self, run_uid: str, state: dict[str, str]) -> None:
        """Remove what an earlier attempt at the run left: its HDF5 file, its catalog node."""
        recover_incomplete(self.config.data_dir)  # frees the names a dead writer held
        # The run is written again from its start: the dead attempt's spool goes, so the
        # new spool does not extend it and no catalog repair replays it beside the new.
        if not discard_spool(self.config.home, run_uid):
            logger.warning("%s: run %s: its spool is still held by a live writer", self.name, run_uid)
        candidates = {Path(state["hdf5"])} if state.get("hdf5") else set()
        first = self.client.xrange(self.keys.run(run_uid), entry_id(1), entry_id(1))
        if first:
            start = decode(first[0][1][DOC_FIELD.encode()])
            candidates.add(self.config.data_dir / file_name_for(start, self.config.hdf5_file_prefix))
        for path in candidates:
            if path.is_file() and _file_run(path) == run_uid:
                path.unlink()
                logger.warning("%s: run %s: removed %s, written by an earlier attempt", self.name, run_uid, path)
        if not self.config.tiled_enabled:
            return
        try:
            connection = connect_catalog(self.config)
        except Exception as exc:
            logger.warning("%s: run %s: the catalog cannot be reached to clear it (%s)", self.name, run_uid, exc)
            return
        try:
            if run_uid in connection.client:
                connection.client.delete_contents(run_uid, recursive=True, external_only=False)
                logger.warning("%s: run %s: removed its catalog entry from an earlier attempt", self.name, run_uid)
        except Exception as exc:
            logger.warning("%s: run %s: its earlier catalog entry could not be removed (%s)", self.name, run_uid, exc)
        finally:
            connection.close()

    def _retry_held(self) -> None:
        now = time.monotonic()
        for announcement, (run_uid, retry_at, _tries) in list(self._held.items()):
            if retry_at <= now and not self._stopping.is_set():
                self.process(announcement, run_uid)

    # -- liveness -----------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Touch this worker's pending runs and publish its heartbeat, whatever the writing does.

        A thread of its own: one slow step of a run (a catalog request on a busy machine)
        must not make the run look abandoned to the other workers.
        """
        client = connect(self.config)
        claims = Claims(client, self.keys.runs, POST_PROCESSING_GROUP, self.name, self.config.bus_claim_idle)
        while not self._stopping.wait(self.config.bus_claim_idle / 4):
            with self._owned_lock:
                owned = [a for a in (self._current, *self._held) if a is not None]
            beat = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "run": self._current,
                    "ready": self._ready}  # fmt: skip
            try:
                kept = claims.touch(owned)
                # Lives one claim interval: a worker whose heartbeat is gone may be taken over.
                client.set(self.keys.worker(self.name), json.dumps(beat), px=int(self.config.bus_claim_idle * 1000))
            except redis.RedisError:
                continue  # the main loop reports and waits for Redis
            with self._owned_lock:
                for announcement in set(owned) - kept:
                    self._lost.add(announcement)
                    if announcement in self._held:
                        logger.warning("%s: run %s was taken over by another worker", self.name,
                                       self._held.pop(announcement)[0])  # fmt: skip
        client.close()

    def _warm_up(self) -> None:
        """Import and build the chain once (Tiled's imports take seconds), before the first run.

        The catalog writer is made only when a run starts: its imports (bluesky-tiled-plugins
        brings dask, scipy, SQLAlchemy) are done here, or the first run of a fresh worker
        would reach its file and its catalog seconds late, and a live reader would see
        nothing of it until after its stop."""
        try:
            for module in post_processing_imports(self.config):
                importlib.import_module(module)
            chain = build_post_processing(self.config)
            close = getattr(chain, "close", None)
            if callable(close):
                close()
        except Exception:
            logger.exception("%s: the post-processing chain could not be built", self.name)
        self._ready = True

    # -- bounding the bus ---------------------------------------------------------------------

    def trim(self) -> None:
        """Drop announcements every group has acknowledged; let their finished runs expire."""
        runs = self.keys.runs
        floor: tuple[int, int] | None = None
        for group in self.client.xinfo_groups(runs):
            if int(group["pending"]) > 0:
                oldest = self.client.xpending(runs, _text(group["name"]))["min"]
                candidate = _stream_id(_text(oldest))
            else:
                last = _stream_id(_text(group["last-delivered-id"]))
                candidate = (last[0], last[1] + 1)
            floor = candidate if floor is None or candidate < floor else floor
        if floor is None:
            return
        minid = f"{floor[0]}-{floor[1]}"
        for _raw_id, fields in self.client.xrange(runs, "-", f"({minid}"):
            run_uid = _text(fields.get(RUN_FIELD.encode(), b""))
            if self.client.hget(self.keys.state(run_uid), "status") in (DONE.encode(), INCOMPLETE.encode()):
                retention = int(self.config.bus_retention)
                for key in (self.keys.run(run_uid), self.keys.analysis(run_uid)):
                    if retention > 0:
                        self.client.expire(key, retention)
                    else:
                        self.client.delete(key)
                self.client.expire(self.keys.state(run_uid), STATE_TTL)
        self.client.xtrim(runs, minid=minid)


def unwritten_outcome(run_uid: str, reason: str, hdf5: str | None) -> dict[str, Any]:
    """The outcome of a run the chain did not finish (no `RunOutcome` came): nothing
    counted durable, ``reason`` the problem; shaped as `RunOutcome.to_dict`."""
    points = 0
    if hdf5:
        with contextlib.suppress(OSError, KeyError), h5py.File(hdf5, "r", swmr=True) as f:
            points = int(f["entry/points"][()])
    return {"run": run_uid, "status": "incomplete", "points": points, "bundled": None, "hdf5": hdf5, "tiled": None,
            "catalog_rows": None, "exit_status": None, "problems": [reason], "spool": None,
            "file_complete": False, "catalog_complete": None}  # fmt: skip


def _file_run(path: Path) -> str | None:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return _text(f["entry/run_uid"][()])
    except (OSError, KeyError):
        return None


def replay(config: OrchestrionConfig, run_uids: list[str] | None = None, *, keys: BusKeys | None = None) -> list[str]:
    """Announce failed runs again (default: every failed run), so that a worker writes them.

    Their documents have stayed on the bus.  Raises ``ValueError`` naming a run that has
    no documents on the bus.
    """
    keys = keys or BusKeys()
    client = connect(config)
    try:
        uids = run_uids or sorted(_text(k) for k in client.hkeys(keys.failed))
        for run_uid in uids:
            if not client.exists(keys.run(run_uid)):
                raise ValueError(f"run {run_uid} has no documents on the bus")
        for run_uid in uids:
            client.hset(keys.state(run_uid), mapping={"status": REPLAY, "unfinished": 0})
            client.hdel(keys.failed, run_uid)
            client.xadd(keys.runs, {RUN_FIELD: run_uid})
        return uids
    finally:
        client.close()
