"""Names every layer agrees on: streams, data keys and metadata keys of a run.

The bottom layer: this module imports nothing of Orchestrion's, so the experiment
runner that writes these names, the pipeline that reads them and the job table that
files runs by them all take them from here.
"""

from __future__ import annotations

import re

# Streams of a run.
PRIMARY = "primary"
"""One event per scan point, read by the RunEngine."""
BASELINE = "baseline"
BUNDLED = "bundled"
"""One synchronized record per scan point, made by the bundler after the RunEngine."""
ANALYSIS = "analysis"
"""Fit results of the finished scan, one event."""
SEQUENCES = "sequences"
"""Each distinct pulse sequence of the run, once."""

# Data keys.
POINT_KEY = "point-index"
"""The scan point's index in the run (the bundler's join key)."""
COMPLETE_KEY = "bundle-complete"
"""False on a bundled point that lacks a reading at the run's stop."""
SEQUENCE_HASH_KEY = "sequence-hash"
SEQUENCE_JSON_KEY = "sequence-json"
FIT_PREFIX = "fit-"

# Queue-server plan names (jobs, the worker; ADR 0310).
EXECUTOR_PLAN = "orchestrion_executor"
"""The queue-server plan that runs Orchestrion's queued jobs back to back, in the job table's order."""

# Start-document metadata keys.
JOB_ID_KEY = "job_id"
"""The job-table id of the job a run belongs to."""
PARAMETERS_AT = "parameters_at"
"""An ISO-8601 time as of which a run reads its own experiment's parameters."""
PARAMETERS_READ = "parameters_read"
"""The ISO-8601 time at which a run's parameter snapshot was read (start document)."""
PREPARED_AHEAD = "prepared_ahead"
"""True in a start document whose run was prepared while the job before it ran (ADR 0313)."""
POINT_SEQUENCE_KEY_MD = "sequence_hash_key"
"""Names the data key of the primary stream that carries each point's sequence hash."""
UNITS_MD = "units"
"""{parameter id or fit result name: unit} of a run's parameters and fits (files' ``units``)."""
EXPERIMENT_MD = "experiment"
"""The experiment a run ran (searchable in the catalog at the run's top level)."""
CATALOG_MD = "orchestrion"
"""The run's catalog metadata written by Orchestrion: hdf5 path and fits (the search keys are at the top)."""


def fit_key(name: str) -> str:
    """The analysis stream's data key of fit result ``name``."""
    return f"{FIT_PREFIX}{name}"


def fit_name(key: str) -> str:
    """The fit result's name in an analysis data key (the key itself if not a fit key)."""
    return key.removeprefix(FIT_PREFIX)


def id_to_data_key(parameter_id: str) -> str:
    """Parameter ids carry dots; event-model data keys (and Tiled columns) may not."""
    return parameter_id.replace(".", "_")


_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_]+")


def nexus_name(text: str) -> str:
    """``text`` as a NeXus item name: letters, digits and ``_`` only, not starting with a digit.

    NeXus validators reject dots and dashes; writers keep the original as an attribute.
    """
    cleaned = _NOT_IN_NAMES.sub("_", str(text)).strip("_")
    if not cleaned:
        return "unnamed"
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


# -- the API server's paths (API server area): its routes and its door to Tiled -----------

API_PREFIX = "/api/orchestrion"
"""Orchestrion's routes on the API server (bluesky-httpserver's own are under /api/)."""
API_TILED_PREFIX = "/tiled"
"""Tiled's read API through the API server: `tiled.client.from_uri(API_URL + API_TILED_PREFIX, api_key=KEY)`.

At the server's root, as a Tiled server's own root: the tiled client reads a path with
"/api" in it as Tiled's API path itself."""
