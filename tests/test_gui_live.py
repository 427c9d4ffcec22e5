"""The data page fed a run's documents as the live stream delivers them (Qt offscreen, no stack).

The documents reach the GUI thread through the window's mailbox, as the live stream's
thread hands them over; every wait is on the page's own state.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from event_model import compose_run

from orchestrion.gui import LiveEvent, MainWindow


class NoStack:
    """This window is never started: nothing may reach for a stack."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the live page asked the stack for {name}")


@pytest.fixture(scope="session")
def qapp_args() -> list[str]:
    return [sys.argv[0], "-platform", "offscreen"]


@pytest.fixture
def window(qtbot: Any) -> Iterator[MainWindow]:
    opened = MainWindow(NoStack())  # type: ignore[arg-type]
    qtbot.addWidget(opened)
    opened.show()
    yield opened
    opened.shutdown()


def run_documents(axes: dict[str, list[float]], repetitions: int = 1, shots: int = 20) -> list[tuple[str, Any]]:
    """An Orchestrion-shaped run over a grid of ``axes`` (first outermost)."""
    described = [{"id": pid, "kind": "parameter", "values": values} for pid, values in axes.items()]
    keys = [f"point-{pid.replace('.', '_')}" for pid in axes]
    grid = np.array(np.meshgrid(*axes.values(), indexing="ij")).reshape(len(axes), -1).T
    run = compose_run(
        metadata={
            "experiment": "spectroscopy", "num_points": len(grid) * repetitions,
            "scan": {"axes": described, "repetitions": repetitions, "shots": shots, "pattern": "linear"},
            "hints": {"dimensions": [([key], "primary") for key in keys]},
        }
    )  # fmt: skip
    number = {"dtype": "number", "shape": [], "source": "test"}
    data_keys = {
        "sequencer-bright_fraction": number,
        "sequencer-counts": {"dtype": "array", "shape": [shots], "source": "test"},
        "point-repetition": {"dtype": "integer", "shape": [], "source": "test"},
        **dict.fromkeys(keys, number),
    }
    hints = {"sequencer": {"fields": ["sequencer-bright_fraction"]}, "point": {"fields": keys}}
    primary = run.compose_descriptor(name="primary", data_keys=data_keys, hints=hints)
    docs: list[tuple[str, Any]] = [("start", run.start_doc), ("descriptor", primary.descriptor_doc)]
    rng = np.random.default_rng(3)
    for repetition in range(repetitions):
        for values in grid:
            counts = rng.poisson(3, shots)
            data = {
                "sequencer-bright_fraction": float(np.mean(counts > 5)),
                "sequencer-counts": counts.tolist(),
                "point-repetition": repetition,
                **{key: float(v) for key, v in zip(keys, values, strict=True)},
            }
            docs.append(("event", primary.compose_event(data=data, timestamps=dict.fromkeys(data, time.time()))))
    docs.append(("stop", run.compose_stop()))
    return docs


def deliver(window: MainWindow, docs: list[tuple[str, Any]], job_id: int = 7) -> threading.Thread:
    """Hand the documents over from another thread, as the live stream does."""

    def feed() -> None:
        for name, doc in docs:
            window.live_mailbox.put(LiveEvent(kind="document", job_id=job_id, name=name, document=doc))

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


def test_live_points_are_drawn_as_they_arrive_per_repetition_and_averaged(qtbot: Any, window: MainWindow) -> None:
    docs = run_documents({"spectroscopy.detuning": list(np.linspace(-1e5, 1e5, 11))}, repetitions=3)
    deliver(window, docs).join()
    data = window.data
    qtbot.waitUntil(lambda: data.drawn_points == 33 and data.run is not None and data.run.exit_status == "success")
    assert data.live_job == 7
    labels = {item.name() for item in data.graph.getPlotItem().listDataItems()}
    assert {"repetition 1", "repetition 2", "repetition 3", "average"} <= labels
    averaged = next(i for i in data.graph.getPlotItem().listDataItems() if i.name() == "average")
    assert np.asarray(averaged.getData()[1]).size == 11
    assert "33 of 33 points" in data.heading.text()
    # The shot histogram holds every shot of every point.
    assert data.plot is not None
    assert data.plot.histograms[0].counts.sum() == 33 * 20


def test_a_two_axis_grid_is_drawn_as_an_image(qtbot: Any, window: MainWindow) -> None:
    docs = run_documents({"spectroscopy.detuning": [-1e5, 0.0, 1e5], "qubit.pi_time": [5e-6, 1e-5]})
    deliver(window, docs).join()
    data = window.data
    qtbot.waitUntil(lambda: data.drawn_points == 6)
    assert data.plot is not None
    assert data.plot.image is not None
    assert data.image.image is not None
    assert data.image.image.shape == (2, 3)  # x (inner axis) first, as pyqtgraph takes it


def test_without_follow_a_new_job_does_not_replace_the_run_shown(qtbot: Any, window: MainWindow) -> None:
    data = window.data
    deliver(window, run_documents({"spectroscopy.detuning": [-1e5, 0.0, 1e5]}), job_id=1).join()
    qtbot.waitUntil(lambda: data.drawn_points == 3)
    shown = data.run
    data.follow.setChecked(False)
    deliver(window, run_documents({"spectroscopy.detuning": [-2e5, 2e5]}), job_id=2).join()
    window.live_mailbox.drain()
    assert data.run is shown
    assert data.live_job == 1
    data.follow.setChecked(True)
    deliver(window, run_documents({"spectroscopy.detuning": [-2e5, 2e5]}), job_id=3).join()
    qtbot.waitUntil(lambda: data.live_job == 3 and data.drawn_points == 2)


def test_points_from_the_bus_with_their_runs_start_are_drawn_without_reading_the_catalog(
    qtbot: Any, window: MainWindow
) -> None:
    # The API's live stream sends a run's start and primary descriptor with its first rows
    # from the bus: the page draws them at once (NoStack fails any read of the catalog),
    # where it used to wait a second or more for the run's start to reach Tiled.
    docs = run_documents({"spectroscopy.detuning": list(np.linspace(-1e5, 1e5, 10))}, repetitions=2)
    (start,), (descriptor,) = ([d for n, d in docs if n == name] for name in ("start", "descriptor"))
    keys = {key: key for key in descriptor["data_keys"]}
    rows = [{**d["data"], "time": d["time"], "index": i} for i, d in enumerate(d for n, d in docs if n == "event")]
    batches = [rows[:3], rows[3:12], rows[12:]]
    for number, batch in enumerate(batches):
        document: dict[str, Any] = {"points": batch, "keys": keys}
        if number == 0:
            document |= {"start": start, "descriptor": descriptor}
        window.live_mailbox.put(LiveEvent(kind="points", job_id=5, document=document))
    data = window.data
    qtbot.waitUntil(lambda: data.drawn_points == 20)
    assert data.live_job == 5
    assert data.run is not None
    assert data.run.uid == start["uid"]
    assert data.message.text() == ""
    assert "20 of 20 points" in data.heading.text()
    assert data.plot is not None
    assert data.plot.histograms[0].counts.sum() == 20 * 20
