"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.lab import Lab, activate, open_lab
from orchestrion.session import stop_event_loop

# `orchestrion run` leaves a warmed post-processing process behind for the next run of its
# home (ADR 0814).  Every test has its own home, so none would be adopted and each would
# wait its ten minutes: off for the suite (and the processes it starts); tests/test_standby.py
# turns it on.
os.environ["ORCHESTRION_POST_PROCESSING_STANDBY"] = "0"

# Hardware runs 50 times faster than real time in tests: a 100-shot point takes ~2.4 ms.
TEST_TIME_SCALE = 0.02


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $ORCHESTRION_HOME with fast, seeded simulated hardware."""
    path = tmp_path / "home"
    monkeypatch.setenv("ORCHESTRION_HOME", str(path))
    monkeypatch.setenv("ORCHESTRION_SIM_TIME_SCALE", str(TEST_TIME_SCALE))
    monkeypatch.setenv("ORCHESTRION_SIM_SEED", "1234")
    return path


@pytest.fixture
def config(home: Path) -> OrchestrionConfig:
    return load_config()


@pytest.fixture
def RE() -> Iterator[RunEngine]:
    run_engine = RunEngine({}, call_returns_result=True)
    yield run_engine
    stop_event_loop(run_engine)  # halts a run left open, then stops the loop's thread


@pytest.fixture
def lab(config: OrchestrionConfig, RE: RunEngine) -> Iterator[Lab]:
    """The demo lab, connected in the RunEngine's loop and active for the library's plans."""
    opened = open_lab(config)
    activate(opened)
    yield opened
    activate(None)
    opened.close()


@pytest.fixture
def docs(RE: RunEngine) -> dict[str, list[Any]]:
    """Every document the RunEngine emits, by name."""
    collected: dict[str, list[Any]] = defaultdict(list)
    RE.subscribe(lambda name, doc: collected[name].append(doc))
    return collected


# Markers follow from the real servers a test needs, so `pytest -m "not stack"` runs the
# fast tests alone: a test is marked by the fixtures that start those servers.
MARKER_FIXTURES = {
    "stack": {"stack"},
    "influx": {"influxd"},
    "x11": {"x_display"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKER_FIXTURES.items():
            if used & fixtures:
                item.add_marker(marker)
