"""Detectors that write their own files (StreamResource / StreamDatum) through the pipeline:
a real ophyd-async `SimBlobDetector` writing HDF5, the real post-processing process, the
real embedded catalog (ADR 0212)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import Msg
from event_model import compose_run

from orchestrion.config import OrchestrionConfig
from orchestrion.pipeline import (
    BUNDLED,
    Bundler,
    RunPlacer,
    build_pipeline,
    build_post_processing,
    open_embedded_catalog,
    repair_catalog,
)
from orchestrion.pipeline._offload import ProcessSink

from .detector_support import DATASET, FRAME_SHAPE, blob_detector, count_then, detector_file
from .support import free_port, wait_until


def test_a_detector_scan_is_linked_in_the_run_file_and_read_from_the_catalog(
    config: OrchestrionConfig, RE: RunEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = blob_detector(config.detectors_dir)
    pipeline = build_pipeline(config)
    pipeline.subscribe(RE)
    try:
        (uid,) = RE(count_then(detector, 3)).run_start_uids
        assert pipeline.wait_catalogued(uid, timeout=120)
    finally:
        pipeline.close()
    summary = pipeline.summaries.runs[uid]
    assert (summary.status, summary.points) == ("success", 3), summary.reason
    assert summary.outcome is not None
    checked = {item["data_key"]: item for item in summary.outcome["external"]}
    assert (checked["det"]["promised"], checked["det"]["found"]) == (3, 3)
    assert summary.hdf5 is not None
    with h5py.File(detector_file(config.detectors_dir), "r") as f:
        frames = f[DATASET][()]
    assert frames.shape == (3, *FRAME_SHAPE)
    assert frames.any()
    # The run's file reaches the frames through a relative external link (the detectors'
    # directory is below the data directory), from anywhere: not only from its directory.
    monkeypatch.chdir(tmp_path)
    with h5py.File(summary.hdf5, "r") as f:
        group = f["entry/external/det"]
        link = group.get("data", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert (link.filename, link.path) == ("detectors/blob.h5", DATASET)
        assert group.attrs["NX_class"] == "NXdata"
        assert group.attrs["uri"].endswith("/detectors/blob.h5")
        np.testing.assert_array_equal(group["data"][()], frames)
        # The bundled points carry no stand-in for the frames; having no number to plot,
        # the default plot shows the frames, one per point, through the same link.
        assert f["entry/data/det"].shape == (3, *FRAME_SHAPE)
        assert f["entry/data"].get("det", getlink=True).filename == "detectors/blob.h5"
        assert f["entry/data"].attrs["signal"] == "det"
        assert list(f["entry/data"].attrs["axes"]) == ["seq_num", ".", "."]
    catalog = open_embedded_catalog(config.home)  # a plain Tiled client
    try:
        run = catalog.client[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert "det" not in run[BUNDLED]
        np.testing.assert_array_equal(np.asarray(run["primary/det"][1]).reshape(FRAME_SHAPE), frames[1])
    finally:
        catalog.close()


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_a_detector_file_without_the_promised_frames_makes_the_run_incomplete(
    config: OrchestrionConfig, RE: RunEngine, damage: str
) -> None:
    detector = blob_detector(config.detectors_dir)
    path = detector_file(config.detectors_dir)

    def damage_file() -> None:
        # The detector keeps writing into the file it has open; its name now holds less.
        path.unlink()
        if damage == "short":
            with h5py.File(path, "w") as f:
                f.create_dataset(DATASET, data=np.zeros((1, *FRAME_SHAPE), dtype=np.uint8))

    pipeline = build_pipeline(config.model_copy(update={"tiled_enabled": False}))
    pipeline.subscribe(RE)
    try:
        (uid,) = RE(count_then(detector, 3, damage_file)).run_start_uids
        pipeline.wait_catalogued(uid, timeout=120)
    finally:
        pipeline.close()
    summary = pipeline.summaries.runs[uid]
    assert summary.status == "incomplete"
    assert summary.points == 3  # every point is in the run's file: the frames are not
    expected = "is missing (3 frames promised)" if damage == "missing" else "holds 1 of 3 frames of det"
    assert expected in summary.reason
    assert str(path) in summary.reason


def test_a_run_with_a_detector_taken_over_from_a_killed_helper_is_linked_whole(
    config: OrchestrionConfig, RE: RunEngine
) -> None:
    detector = blob_detector(config.detectors_dir)
    pipeline = build_pipeline(config.model_copy(update={"tiled_enabled": False}))
    pipeline.subscribe(RE)

    def killed_midway() -> Generator[Msg, Any, Any]:
        @bpp.stage_decorator([detector])
        @bpp.run_decorator(md={"plan_name": "count"})
        def inner() -> Generator[Msg, Any, None]:
            for _ in range(2):
                yield from bps.trigger_and_read([detector])
            uid = next(iter(pipeline.summaries.runs))
            summary = pipeline.summaries.runs[uid]
            wait_until(lambda: summary.hdf5 is not None and Path(summary.hdf5).exists(), timeout=120, what="file")
            stage = pipeline.catalog_stage
            assert isinstance(stage, ProcessSink)
            helper = stage._helper.process
            # Frozen first, so that the third point's documents (its stream_datum among
            # them) are handed to a helper that never confirms them: the successor has
            # them only from this process, and must place them after the spool's.
            os.kill(helper.pid, signal.SIGSTOP)
            yield from bps.trigger_and_read([detector])
            helper.kill()
            helper.wait()
            yield from bps.trigger_and_read([detector])

        return (yield from inner())

    try:
        (uid,) = RE(killed_midway()).run_start_uids
        assert pipeline.wait_catalogued(uid, timeout=120)
    finally:
        pipeline.close()
    summary = pipeline.summaries.runs[uid]
    assert (summary.status, summary.points) == ("success", 4), summary.reason
    assert summary.hdf5 is not None
    with h5py.File(summary.hdf5, "r") as f:
        assert f["entry/external/det/data"].shape == (4, *FRAME_SHAPE)
        assert f["entry/external/det_sum/data"].shape == (4,)


def test_the_bundled_stream_leaves_external_keys_out_and_passes_their_documents_on() -> None:
    out: list[tuple[str, dict[str, Any]]] = []
    bundler = Bundler(lambda name, doc: out.append((name, doc)))
    run = compose_run()
    bundler("start", dict(run.start_doc))
    keys = {
        "det": {"source": "file://localhost/d.h5", "shape": [1, 4, 4], "dtype": "array",
                "dtype_numpy": "|u1", "external": "STREAM:"},
        "motor": {"source": "sim", "shape": [], "dtype": "number"},
    }  # fmt: skip
    descriptor = run.compose_descriptor(name="primary", data_keys=keys, object_keys={"det": ["det"], "m": ["motor"]})
    bundler("descriptor", dict(descriptor.descriptor_doc))
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5", uri="file://localhost/d.h5", data_key="det", parameters={"dataset": "/d"}
    )
    bundler("stream_resource", dict(resource.stream_resource_doc))
    for n in range(2):
        datum = resource.compose_stream_datum(
            indices={"start": n, "stop": n + 1}, seq_nums={"start": n + 1, "stop": n + 2},
            descriptor=descriptor.descriptor_doc,
        )  # fmt: skip
        bundler("stream_datum", dict(datum))
        bundler("event", dict(descriptor.compose_event(data={"motor": float(n)}, timestamps={"motor": 0.0})))
    bundler("stop", dict(run.compose_stop()))
    names = [name for name, _ in out]
    assert names.count("stream_resource") == 1
    assert names.count("stream_datum") == 2
    bundled = next(doc for name, doc in out if name == "descriptor" and doc["name"] == BUNDLED)
    assert "det" not in bundled["data_keys"]
    assert "motor" in bundled["data_keys"]
    assert bundled["object_keys"].get("det") is None
    points = [doc for name, doc in out if name == "event" and doc["descriptor"] == bundled["uid"]]
    assert [p["data"].get("det") for p in points] == [None, None]
    assert [p["data"]["motor"] for p in points] == [0.0, 1.0]


def test_the_detectors_directory_is_configuration(config: OrchestrionConfig, tmp_path: Path) -> None:
    assert config.detectors_dir == config.data_dir / "detectors"
    os.environ["ORCHESTRION_DETECTOR_DATA_DIR"] = "frames"
    try:
        from orchestrion.config import load_config

        assert load_config().detectors_dir == config.home / "frames"
    finally:
        del os.environ["ORCHESTRION_DETECTOR_DATA_DIR"]


def test_catalog_repair_registers_a_detectors_frames_from_the_spool(config: OrchestrionConfig, RE: RunEngine) -> None:
    detector = blob_detector(config.detectors_dir)
    unreachable = config.model_copy(update={"tiled_uri": f"http://127.0.0.1:{free_port()}"})
    pipeline = build_pipeline(unreachable)
    pipeline.subscribe(RE)
    try:
        (uid,) = RE(count_then(detector, 3)).run_start_uids
        pipeline.wait_catalogued(uid, timeout=240)
    finally:
        pipeline.close()
    summary = pipeline.summaries.runs[uid]
    assert summary.status == "incomplete"  # not catalogued: its documents are spooled
    (result,) = repair_catalog(config)
    assert (result.action, result.rows, result.problems) == ("repaired", 3, [])
    with h5py.File(detector_file(config.detectors_dir), "r") as f:
        frames = f[DATASET][()]
    catalog = open_embedded_catalog(config.home)
    try:
        registered = catalog.client[uid]["primary/det"]
        assert registered.shape[0] == 3
        np.testing.assert_array_equal(np.asarray(registered[2]).reshape(FRAME_SHAPE), frames[2])
    finally:
        catalog.close()


def test_stream_datums_promising_more_than_the_file_or_of_no_resource_make_the_run_incomplete(
    config: OrchestrionConfig, tmp_path: Path
) -> None:
    notes: list[dict[str, Any]] = []
    post = build_post_processing(config.model_copy(update={"tiled_enabled": False}), notes.append)
    path = config.detectors_dir / "two.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("/frames", data=np.ones((2, 4, 4), dtype=np.uint8))
    run = compose_run()
    key = {"source": path.as_uri(), "shape": [1, 4, 4], "dtype": "array", "dtype_numpy": "|u1",
           "external": "STREAM:"}  # fmt: skip
    descriptor = run.compose_descriptor(name="primary", data_keys={"cam": key}, object_keys={"cam": ["cam"]})
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5", uri=f"file://localhost{path}", data_key="cam", parameters={"dataset": "/frames"}
    )
    sres = dict(resource.stream_resource_doc)
    del sres["run_start"]  # optional in the schema: the one run open is its run
    post("start", dict(run.start_doc))
    post("descriptor", dict(descriptor.descriptor_doc))
    post("stream_resource", sres)
    for n in range(3):  # three frames promised, two in the file
        datum = resource.compose_stream_datum(indices={"start": n, "stop": n + 1},
                                              seq_nums={"start": n + 1, "stop": n + 2},
                                              descriptor=descriptor.descriptor_doc)  # fmt: skip
        post("stream_datum", dict(datum))
        post("event", dict(descriptor.compose_event(data={}, timestamps={})))
    orphan = {**datum, "uid": "nowhere/0", "stream_resource": "nowhere"}
    post("stream_datum", orphan)
    post("stop", dict(run.compose_stop()))
    (outcome,) = [note["outcome"] for note in notes if "outcome" in note]
    assert outcome["status"] == "incomplete"
    assert outcome["points"] == 3
    assert outcome["file_complete"] is True  # the run's own file holds every point
    assert any("holds 2 of 3 frames of cam (/frames)" in p for p in outcome["problems"]), outcome["problems"]
    assert any("1 stream_datum documents refer to no stream_resource" in p for p in outcome["problems"])
    with h5py.File(outcome["hdf5"], "r") as f:
        assert f["entry/external/cam/data"].shape == (2, 4, 4)
        assert f["entry/external/cam"].attrs["rows_promised"] == 3


CAMERA_LAB = Path(__file__).resolve().parent.parent / "devices" / "camera-example"


def _orchestrion_run(home: Path, devices: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "ORCHESTRION_HOME": str(home), "ORCHESTRION_DEVICES_DIR": str(devices),
        "ORCHESTRION_SIM_TIME_SCALE": "0.02", "ORCHESTRION_SIM_SEED": "5",
    }  # fmt: skip
    command = [str(Path(sys.executable).with_name("orchestrion")), "run", "spectroscopy",
               "--scan", "spectroscopy.detuning=-50e3:50e3:5", "--shots", "10", "--json"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, check=False)


def test_the_camera_example_lab_runs_from_the_cli_its_frames_readable_by_plain_readers(tmp_path: Path) -> None:
    """`devices/camera-example`: a file-writing ophyd-async camera configured in YAML (its
    path provider a resource writing under the detectors' directory), read at every point.
    The camera is staged around the run, so its file is closed when the command returns:
    a plain h5py reader (no SWMR) follows the run file's link to the frames."""
    home = tmp_path / "home"
    done = _orchestrion_run(home, CAMERA_LAB)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "success"
    with h5py.File(summary["hdf5"], "r") as f:
        shape, last = f["entry/external/camera/data"].shape, f["entry/external/camera/data"][4]
    assert shape[0] == 5
    assert last.any()
    connection = open_embedded_catalog(home)
    try:
        frame = connection.client[summary["run_uid"]]["primary/camera"][4]
        assert np.asarray(frame).any()
    finally:
        connection.close()


def test_a_camera_that_cannot_write_its_file_fails_the_run_naming_it(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    text = (CAMERA_LAB / "camera.yaml").read_text().replace("../lab.yaml", str(CAMERA_LAB.parent / "lab.yaml"))
    (devices / "lab.yaml").write_text(text.replace("${detectors_dir}", "/proc/orchestrion-nowhere"))
    done = _orchestrion_run(tmp_path / "home", devices)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "device 'camera' failed at point 0" in lines[-1], done.stderr
    assert "Traceback" not in done.stderr


def test_every_document_of_a_detector_scan_is_placed_in_its_run(config: OrchestrionConfig, RE: RunEngine) -> None:
    # What the helper's feeder and the bus's publisher carry per run: a kind of document
    # placed nowhere is a document dropped from a take-over or from the bus.
    detector = blob_detector(config.detectors_dir)
    documents: list[tuple[str, dict[str, Any]]] = []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    (first,) = RE(count_then(detector, 2)).run_start_uids
    (second,) = RE(count_then(detector, 1)).run_start_uids
    placer = RunPlacer()
    placed = [(name, placer.place(name, doc)) for name, doc in documents]
    assert {"stream_resource", "stream_datum", "event", "descriptor"} <= {name for name, _ in placed}
    uids = [run for _, run in placed]
    assert None not in uids, [name for name, run in placed if run is None]
    assert uids == sorted(uids, key=[first, second].index)  # each run's documents in its own
    assert placer.open_runs == []  # nothing kept of a stopped run
