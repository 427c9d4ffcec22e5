"""Runs from a Tiled catalog (the stack's server or the embedded one), as `RunData`.

Runs are containers written by bluesky-tiled-plugins' TiledWriter: the start and stop
documents in their metadata (searchable as ``start.KEY``), Orchestrion's fit results
under ``orchestrion.analysis``, one node per stream with its descriptor's data keys and
hints in the node's metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from orchestrion.client import local_credentials, tiled_door
from orchestrion.config import OrchestrionConfig
from orchestrion.errors import InputError
from orchestrion.pipeline import CatalogConnection, connect_catalog, open_embedded_catalog
from orchestrion.schema import JOB_ID_KEY, PRIMARY
from orchestrion.services import service

from ._plotdata import RunData
from ._protocol import RunSearch, RunSummary

logger = logging.getLogger(__name__)

MIN_UID_PREFIX = 6
"""A uid prefix shorter than this names too many runs to be meant."""


def run_data_from_node(node: Any) -> RunData:
    """A catalogued run's start, primary points, units, hints and fit."""
    metadata = node.metadata
    start = dict(metadata.get("start") or {})
    stop = metadata.get("stop") or {}
    fit = {k: float(v) for k, v in ((metadata.get("orchestrion") or {}).get("analysis") or {}).items()}
    run = RunData(start=start, fit=fit, exit_status=stop.get("exit_status"))
    if PRIMARY not in node:
        return run
    stream = node[PRIMARY]
    descriptor = {"name": PRIMARY, **dict(stream.metadata)}
    run.add_descriptor(descriptor)
    wanted = [key for key in descriptor.get("data_keys", {}) if descriptor["data_keys"][key].get("dtype") != "string"]
    try:
        table = stream.read(wanted) if wanted else {}
    except Exception as exc:
        # One unreadable column (an array Tiled cannot serve) must not hide the others.
        logger.warning("run %s: reading its points at once failed (%s); reading them one by one", run.uid, exc)
        table = {}
        for key in wanted:
            try:
                table[key] = stream[key].read()
            except Exception as column_error:
                logger.warning("run %s: column %s is unreadable (%s)", run.uid, key, column_error)
    for key in wanted:
        if key in table:
            values = np.asarray(getattr(table[key], "values", table[key]))
            run.columns[key] = [row.tolist() if values.ndim > 1 else row.item() for row in values]
    return run


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def summarize(uid: str, metadata: Mapping[str, Any]) -> RunSummary:
    start = metadata.get("start") or {}
    stop = metadata.get("stop") or {}
    stamp = start.get("time")
    return RunSummary(
        uid=uid,
        experiment=str(start.get("experiment") or start.get("plan_name") or ""),
        time=datetime.fromtimestamp(float(stamp)).astimezone() if isinstance(stamp, int | float) else None,
        job_id=_int(start.get(JOB_ID_KEY)),
        scan_id=_int(start.get("scan_id")),
        points=_int((stop.get("num_events") or {}).get(PRIMARY)),
        exit_status=stop.get("exit_status"),
    )


def search_catalog(client: Any, search: RunSearch) -> list[RunSummary]:
    """Runs matching ``search``, newest first."""
    from tiled.queries import Key

    node = client
    if search.experiment:
        node = node.search(Key("start.experiment") == search.experiment)
    if search.job_id is not None:
        by_number = node.search(Key(f"start.{JOB_ID_KEY}") == search.job_id)
        # Some writers keep the job id as text.
        node = by_number if len(by_number) else node.search(Key(f"start.{JOB_ID_KEY}") == str(search.job_id))
    if search.since is not None:
        node = node.search(Key("start.time") >= search.since.timestamp())
    if search.until is not None:
        node = node.search(Key("start.time") <= search.until.timestamp())
    for key, value in search.metadata.items():
        node = node.search(Key(f"start.{key}") == value)
    found = list(node.items().tail(search.limit)) if search.limit else list(node.items())
    return [summarize(uid, run.metadata) for uid, run in reversed(found)]


def find_run(client: Any, reference: str) -> Any:
    """The run that ``reference`` names: a uid or its prefix, a job id, or -N (the N-th latest).

    Raises `InputError` naming the reference when no run, or more than one, matches.
    """
    from tiled.queries import Key

    text = reference.strip()
    if not text:
        raise InputError("name a run: its uid (or a prefix), a job id or -1 for the latest")
    if text.lstrip("-").isdigit():
        number = int(text)
        if number < 0:
            keys = client.keys()
            if len(keys) < -number:
                raise InputError(f"run {text}: the catalog holds {len(keys)} runs")
            return client[keys[number]]
        jobs = client.search(Key(f"start.{JOB_ID_KEY}") == number)
        if len(jobs) == 0:
            # Older runs and some writers keep the job id as text.
            jobs = client.search(Key(f"start.{JOB_ID_KEY}") == str(number))
        if len(jobs) > 0:
            # A job that was resumed may hold several runs: the last is its data.
            return jobs.values().last()
        if len(text) < MIN_UID_PREFIX:
            raise InputError(f"job {number}: no run of it in the catalog")
        # Not a job: a uid prefix can be all digits (about one uid in forty).
    if text in client:
        return client[text]
    if len(text) < MIN_UID_PREFIX:
        raise InputError(f"run '{text}': give at least {MIN_UID_PREFIX} characters of its uid")
    # Tiled has no prefix query over keys; a short walk over the newest runs finds it.
    matches = [uid for uid in client if uid.startswith(text)]
    if not matches:
        job = " nor a job of that id" if text.isdigit() else ""
        raise InputError(f"run '{text}': no run with that uid in the catalog{job}")
    if len(matches) > 1:
        raise InputError(f"run '{text}': {len(matches)} runs start with it; give more of the uid")
    return client[matches[0]]


def open_catalog(config: OrchestrionConfig) -> CatalogConnection:
    """The catalog runs are in: the configured Tiled server, the stack's (through its API server), or the embedded one.

    The stack's catalog is read as the GUI reads it, through the API server's door to
    Tiled with an API key (`api_url` and `api_key`, or the local stack's URL and admin
    key when `orchestrion up` runs it).  Otherwise runs made by `orchestrion run` are in
    the embedded catalog under the home.
    """
    if config.tiled_uri:
        return connect_catalog(config)
    if config.api_url is not None or service("api").status(config).health == "ok":
        from tiled.client import from_uri

        url, key = local_credentials(config)
        door = tiled_door(url)
        client = from_uri(door, api_key=key)
        return CatalogConnection(client=client, location=door, served=True, _context=client.context)
    return open_embedded_catalog(config.home, config.detector_data_dir)
