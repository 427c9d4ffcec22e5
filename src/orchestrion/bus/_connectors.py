"""Connectors at the edge of the bus: consumers that take finished runs elsewhere.

A connector is named in the entry-point group ``orchestrion.bus_connectors``; the entry
point is a factory ``factory(config) -> (name, doc) callable``, called once per run and
fed that run's documents in order (from its start, live, to its stop); an optional
``close()`` runs after the stop.  Each connector is one consumer group on the
announcement stream, so every run reaches each connector once, whichever worker process
runs it, and a run is acknowledged to the connector's group after its stop went
through.  The workers run the connectors named in ``bus_connectors``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import redis

from orchestrion.config import OrchestrionConfig
from orchestrion.schema import JOB_ID_KEY, PRIMARY

from ._claims import Claims
from ._connection import connect
from ._follow import Follower, RunNotOnBus
from ._keys import BusKeys, connector_group

logger = logging.getLogger(__name__)

CONNECTOR_ENTRY_POINTS = "orchestrion.bus_connectors"

ConnectorFactory = Callable[[OrchestrionConfig], Callable[[str, dict[str, Any]], Any]]


def load_connectors(names: list[str]) -> dict[str, ConnectorFactory]:
    """The connector factories named ``names``; ``ValueError`` naming one that is not installed."""
    found = {ep.name: ep for ep in entry_points(group=CONNECTOR_ENTRY_POINTS)}
    factories: dict[str, ConnectorFactory] = {}
    for name in names:
        if name not in found:
            raise ValueError(f"bus connector {name!r} is not installed (entry points: {sorted(found)})")
        factories[name] = found[name].load()
    return factories


class LogbookConnector:
    """Writes one summary line per run (JSON Lines) to the logbook file.

    The file is ``logbook_path``, else ``$ORCHESTRION_HOME/logbook.jsonl``; each line:
    uid, scan id, experiment, plan, job id, start and stop times, exit status, reason
    and the number of primary points.
    """

    def __init__(self, config: OrchestrionConfig) -> None:
        self.path = Path(config.logbook_path or config.home / "logbook.jsonl")
        self._start: dict[str, Any] = {}
        self._primary: set[str] = set()
        self._points = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self._start = doc
        elif name == "descriptor" and doc.get("name") == PRIMARY:
            self._primary.add(str(doc["uid"]))
        elif name == "event" and doc.get("descriptor") in self._primary:
            self._points += 1
        elif name == "event_page" and doc.get("descriptor") in self._primary:
            self._points += len(doc.get("seq_num") or [])
        elif name == "stop":
            self._write(doc)

    def _write(self, stop: dict[str, Any]) -> None:
        start = self._start
        line = {
            "uid": start.get("uid"), "scan_id": start.get("scan_id"),
            "experiment": start.get("experiment"), "plan_name": start.get("plan_name"),
            "job_id": start.get(JOB_ID_KEY), "start": start.get("time"), "stop": stop.get("time"),
            "exit_status": stop.get("exit_status"), "reason": stop.get("reason") or "",
            "points": self._points,
        }  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as logbook:
            logbook.write(json.dumps(line, default=str) + "\n")


class ConnectorRunner:
    """Runs one connector as ``consumer`` of its group, in a thread: `start`, `stop`."""

    def __init__(
        self, config: OrchestrionConfig, name: str, factory: ConnectorFactory, consumer: str,
        *, keys: BusKeys | None = None,
    ) -> None:  # fmt: skip
        self.config, self.name, self.factory = config, name, factory
        self.keys = keys or BusKeys()
        self.client = connect(config)
        self.claims = Claims(self.client, self.keys.runs, connector_group(name), consumer, config.bus_claim_idle)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"orchestrion-connector-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self.client.close()

    def _serve(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                self.claims.ensure_group()
                entry = self.claims.next(1000)
                if entry is not None:
                    self.handle(*entry)
                delay = 0.1
            except redis.RedisError as exc:
                logger.warning("connector %s: Redis: %s", self.name, exc)
                self._stopping.wait(delay)
                delay = min(delay * 2, 2.0)

    def handle(self, announcement: str, run_uid: str) -> None:
        """Feed the run to a fresh connector; acknowledge it after the stop went through."""
        connector = self.factory(self.config)
        follower = Follower(self.config, keys=self.keys, client=self.client)
        last_touch = time.monotonic()

        def keep() -> None:
            nonlocal last_touch
            if time.monotonic() - last_touch > self.config.bus_claim_idle / 4:
                if announcement not in self.claims.touch([announcement]):
                    raise _TakenOver(run_uid)
                last_touch = time.monotonic()

        try:
            for name, doc in follower.documents(run_uid, idle=keep):
                connector(name, doc)
                keep()
        except _TakenOver:
            return  # another consumer of the group has it now
        except RunNotOnBus:
            logger.warning("connector %s: run %s is no longer on the bus", self.name, run_uid)
        except Exception:
            logger.exception("connector %s failed on run %s", self.name, run_uid)
        finally:
            close = getattr(connector, "close", None)
            if callable(close):
                close()
        self.claims.ack(announcement)


class _TakenOver(Exception):
    """Another consumer claimed the run this one was handling."""
