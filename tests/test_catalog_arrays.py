"""Large arrays of the points: registered in the catalog from the run's HDF5 file (ADR 0215).

Real runs (a RunEngine counting an ophyd.sim signal of 128 KiB arrays, a new value
per point) through post-processing into the embedded catalog; the arrays are read
back through a plain Tiled client and h5py.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import SynSignal

from orchestrion.config import load_config
from orchestrion.pipeline import BUNDLED, RunBundler, Serializer, build_post_processing, open_embedded_catalog
from orchestrion.pipeline._tiled import FileArrays, RunCatalogWriter

ELEMENTS = 1 << 14  # float64: 128 KiB a point, above SMALL_POINT_BYTES
POINTS = 4


def measured_run() -> tuple[list[tuple[str, dict[str, Any]]], list[np.ndarray]]:
    """The documents of a ``bp.count`` of POINTS arrays, each a different one, and the arrays."""
    arrays: list[np.ndarray] = []
    counter = itertools.count()

    def next_array() -> np.ndarray:
        arrays.append(np.full(ELEMENTS, float(next(counter))) + np.arange(ELEMENTS) / ELEMENTS)
        return arrays[-1]

    image = SynSignal(func=next_array, name="image", labels={"detectors"})
    documents: list[tuple[str, dict[str, Any]]] = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: documents.append((name, doc)))
    engine(bp.count([image], POINTS))
    # ophyd.sim's describe() reads the signal once: the points' arrays are the last POINTS.
    return documents, arrays[-POINTS:]


def post_process(home: Path, documents: list[tuple[str, dict[str, Any]]], **config: Any) -> dict[str, Any]:
    notes: list[dict[str, Any]] = []
    stage = build_post_processing(load_config(home=home, **config), notes.append)
    for name, doc in documents:
        stage(name, doc)
    getattr(stage, "close")()  # noqa: B009 - the post-processing callable's optional close
    [outcome] = [note["outcome"] for note in notes if "outcome" in note]
    return dict(outcome)


def test_a_runs_large_arrays_are_read_from_its_file_by_the_catalog_not_copied(tmp_path: Path) -> None:
    documents, arrays = measured_run()
    outcome = post_process(tmp_path, documents)
    assert outcome["status"] == "success", outcome
    hdf5 = Path(outcome["hdf5"])
    with h5py.File(hdf5, "r") as f:
        np.testing.assert_array_equal(f["entry/data/image"][()], np.stack(arrays))
    catalog = open_embedded_catalog(tmp_path)
    try:
        run = catalog.client[outcome["run"]]
        for stream in (BUNDLED, "primary"):
            [source] = run[f"{stream}/image"].data_sources()
            assert source.management == "external", stream
            assert source.mimetype == "application/x-hdf5"
            assert [asset.data_uri for asset in source.assets] == [f"file://localhost{hdf5}"]
            assert source.parameters["dataset"] == "/entry/data/image"
            np.testing.assert_array_equal(run[f"{stream}/image"].read(), np.stack(arrays))
        # The streams' tables have every point, and no column of the registered arrays.
        assert run["primary"].read()["image"].shape == (POINTS, ELEMENTS)
        assert list(run[f"{BUNDLED}/seq_num"].read()) == list(range(1, POINTS + 1))
    finally:
        catalog.close()


def test_with_registration_off_the_catalog_copies_the_arrays(tmp_path: Path) -> None:
    documents, arrays = measured_run()
    outcome = post_process(tmp_path, documents, tiled_register_arrays=False)
    assert outcome["status"] == "success", outcome
    catalog = open_embedded_catalog(tmp_path)
    try:
        image = catalog.client[outcome["run"]][f"{BUNDLED}/image"]
        assert image.data_sources()[0].management != "external"
        np.testing.assert_array_equal(image.read(), np.stack(arrays))
    finally:
        catalog.close()


def write_run(home: Path, documents: list[tuple[str, dict[str, Any]]]) -> tuple[RunCatalogWriter, Path, Any]:
    """The chain post-processing makes, by hand: bundler -> HDF5 file, then the catalog."""
    connection = open_embedded_catalog(home)
    serializer = Serializer(home / "data", data_stream=BUNDLED, skip_streams=("primary",))
    start = documents[0][1]
    serializer("start", start)
    assert serializer.path is not None
    arrays = FileArrays(str(serializer.path), serializer.data_dataset, BUNDLED, "primary")
    writer = RunCatalogWriter(connection, data_stream=BUNDLED, file_arrays=arrays)

    def downstream(name: str, doc: dict[str, Any]) -> None:
        if name != "start":
            serializer(name, doc)
        writer(name, doc)

    bundler = RunBundler(start, downstream)
    for name, doc in documents:
        bundler(name, doc)
    return writer, serializer.path, connection


def test_a_run_whose_file_the_catalog_cannot_read_is_not_reported_catalogued(tmp_path: Path) -> None:
    documents, _ = measured_run()
    writer, hdf5, connection = write_run(tmp_path, documents)
    try:
        assert writer.verify(POINTS).complete
        hdf5.rename(hdf5.with_suffix(".moved"))  # what the catalog points at is gone
        outcome = writer.verify(POINTS)
        assert not outcome.complete
        assert any("cannot read bundled/image from the run's file" in p for p in outcome.problems), outcome
        assert any("cannot read primary/image" in p for p in outcome.problems), outcome
    finally:
        connection.close()


def test_a_raw_event_that_is_not_its_point_breaks_the_mirror_and_is_reported() -> None:
    documents, _ = measured_run()
    arrays = FileArrays("/nonexistent/run.h5", lambda key: "/entry/data/image", BUNDLED, "primary")
    written: list[tuple[str, dict[str, Any]]] = []
    bundler = RunBundler(documents[0][1], lambda name, doc: written.extend(arrays.translate(name, doc)))
    descriptor = next(doc for name, doc in documents if name == "descriptor")
    arrays.plan({**descriptor, "name": BUNDLED})
    for name, doc in documents:
        bundler(name, doc)
        if name == "event" and doc["seq_num"] == 2:  # point 2 reported again: not bundled
            bundler(name, {**doc, "uid": "again", "data": {**doc["data"], "image": doc["data"]["image"].copy()}})
    datums = [doc for name, doc in written if name == "stream_datum"]
    primary = [d for d in datums if d["descriptor"] == descriptor["uid"]]
    assert [d["indices"]["start"] for d in primary] == [0, 1]  # then the raw stream has one event more
    assert arrays.broken == "point 3 is not primary event 3"
    assert all("image" not in doc["data"] for name, doc in written if name == "event")


@pytest.mark.parametrize("shape", [[16], [None]])
def test_small_or_ragged_arrays_stay_in_the_catalog(shape: list[int | None]) -> None:
    arrays = FileArrays("/nonexistent/run.h5", lambda key: "/entry/data/" + key, BUNDLED, "primary")
    arrays.plan({"data_keys": {"a": {"dtype": "array", "shape": shape, "dtype_numpy": "<f8", "source": "s"}}})
    assert arrays.datasets == {}
