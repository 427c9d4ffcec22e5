"""Following runs live from the bus: their documents, raw or bundled, and analysis results.

A follower reads a run's stream from its first document, so one that joins late (the
run half done) still gets the whole run, in order, then waits for what comes next until
the run's stop.  Nothing a follower does changes the bus: it reads, it does not
acknowledge, and any number of them follow the same run.  Results a follower computes
go back with `publish_analysis` into the run's ``analysis`` stream, which other
followers read with `follow_analysis`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from orchestrion.config import OrchestrionConfig
from orchestrion.pipeline import Bundler

from ._codec import decode, encode
from ._connection import RedisClient, connect
from ._keys import DOC_FIELD, NAME_FIELD, RUN_FIELD, BusKeys

Document = tuple[str, dict[str, Any]]


class RunNotOnBus(LookupError):
    """The run has no documents on the bus (never published, or expired after ``bus_retention``)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Follower:
    """Reads the bus of one stack: new runs as they start, each run's documents as they come.

    ``Follower(config)`` connects to the configured bus (``bus_redis_url``, else the
    stack's Redis).  Use it as a context manager, or call `close`.
    """

    def __init__(self, config: OrchestrionConfig, *, keys: BusKeys | None = None, client: RedisClient | None = None):
        self.keys = keys or BusKeys()
        self.client = client or connect(config)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def runs(self, *, since_start: bool = False, timeout: float | None = None) -> Iterator[str]:
        """Uids of runs as they start (with ``since_start``, every run still announced first).

        Stops after ``timeout`` seconds without a new run (None: never).
        """
        last = "0-0" if since_start else "$"
        while True:
            answer = self.client.xread({self.keys.runs: last}, count=100, block=_block_ms(timeout))
            if not answer:
                return
            for raw_id, fields in answer[0][1]:
                last = _text(raw_id)
                yield _text(fields[RUN_FIELD.encode()])

    def documents(
        self, run_uid: str, *, timeout: float | None = None, idle: Callable[[], None] | None = None
    ) -> Iterator[Document]:
        """The run's documents ``(name, doc)`` from its start, live, up to and with its stop.

        Raises `RunNotOnBus` if the run is not on the bus, ``TimeoutError`` after
        ``timeout`` seconds without a document (None: wait as long as it takes).
        ``idle`` is called about once a second while no document comes.
        """
        stream = self.keys.run(run_uid)
        if not self.client.exists(stream):
            raise RunNotOnBus(f"run {run_uid} is not on the bus")
        last, silent_since = "0-0", time.monotonic()
        while True:
            slice_ms = _block_ms(timeout) if idle is None else min(_block_ms(timeout) or 1000, 1000)
            answer = self.client.xread({stream: last}, count=500, block=slice_ms)
            if not answer:
                if timeout is not None and time.monotonic() - silent_since >= timeout:
                    raise TimeoutError(f"run {run_uid}: no document for {timeout} s")
                if idle is not None:
                    idle()
                continue
            silent_since = time.monotonic()
            for raw_id, fields in answer[0][1]:
                last = _text(raw_id)
                name = _text(fields[NAME_FIELD.encode()])
                yield name, decode(fields[DOC_FIELD.encode()])
                if name == "stop":
                    return

    def read(self, run_uid: str, after: str = "0-0", *, count: int = 500) -> tuple[list[Document], str]:
        """The run's documents after entry ``after`` that are on the bus now (at most
        ``count``), without waiting, and the entry id to read on from.

        Raises `RunNotOnBus` if the run's stream is not (or no longer) there."""
        stream = self.keys.run(run_uid)
        answer = self.client.xread({stream: after}, count=count)
        if not answer:
            if not self.client.exists(stream):
                raise RunNotOnBus(f"run {run_uid} is not on the bus")
            return [], after
        documents: list[Document] = []
        for raw_id, fields in answer[0][1]:
            after = _text(raw_id)
            documents.append((_text(fields[NAME_FIELD.encode()]), decode(fields[DOC_FIELD.encode()])))
        return documents, after

    def bundled(self, run_uid: str, *, timeout: float | None = None) -> Iterator[Document]:
        """The run's documents with its ``bundled`` stream: one synchronized event per scan
        point, made by the same `Bundler` as the files' (raw documents are passed on too)."""
        out: list[Document] = []
        bundler = Bundler(lambda name, doc: out.append((name, doc)))
        for name, doc in self.documents(run_uid, timeout=timeout):
            bundler(name, doc)
            yield from out
            out.clear()

    def publish_analysis(self, run_uid: str, result: dict[str, Any], *, producer: str) -> str:
        """Publish ``result`` (JSON-able) for the run into its ``analysis`` stream; the entry id."""
        entry = {"producer": producer, "time": str(time.time()), DOC_FIELD: encode(result)}
        return _text(self.client.xadd(self.keys.analysis(run_uid), entry))

    def analysis(self, run_uid: str, *, timeout: float | None = 0.0) -> Iterator[dict[str, Any]]:
        """Results published for the run, oldest first: ``{producer, time, result}``.

        With the default ``timeout`` 0 it returns what is there; with a timeout it waits
        that long for each next result (None: for ever).
        """
        stream, last = self.keys.analysis(run_uid), "0-0"
        while True:
            block = None if timeout == 0 else _block_ms(timeout)
            answer = self.client.xread({stream: last}, count=100, block=block)
            if not answer:
                return
            for raw_id, fields in answer[0][1]:
                last = _text(raw_id)
                yield {
                    "producer": _text(fields[b"producer"]),
                    "time": float(_text(fields[b"time"])),
                    "result": decode(fields[DOC_FIELD.encode()]),
                }


def _block_ms(timeout: float | None) -> int:
    # 0 blocks for ever in Redis.
    return 0 if timeout is None else max(1, int(timeout * 1000))
