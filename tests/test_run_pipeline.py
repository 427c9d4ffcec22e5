"""End to end: `orchestrion run --json` sends the run through the bundler to HDF5 and Tiled."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import pytest
from bluesky import RunEngine
from bluesky.utils import Msg
from event_model import compose_run
from ophyd.sim import det
from tiled.queries import Key

from orchestrion.config import OrchestrionConfig
from orchestrion.experiment import RunRequest
from orchestrion.pipeline import BUNDLED, DocumentPipeline, _offload, build_pipeline, open_embedded_catalog
from orchestrion.pipeline._offload import ProcessSink, start_helper
from orchestrion.session import EmbeddedSession

from .support import free_port, wait_until

ORCHESTRION = Path(sys.executable).with_name("orchestrion")


def test_orchestrion_run_reports_its_hdf5_file_and_tiled_node(home: Path) -> None:
    result = subprocess.run(
        [str(ORCHESTRION), "run", "spectroscopy", "--scan", "spectroscopy.detuning=-1e5:1e5:11",
         "--shots", "8", "--json"],
        capture_output=True, text=True, env=os.environ.copy(), timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The post-processing helper starts from a module its package does not import.
    assert "found in sys.modules" not in result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "success"
    assert report["points"] == 11
    path = Path(report["hdf5"])
    assert path.parent == (home / "data").resolve()
    assert "spectroscopy" in path.name
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert entry["status"][()] == b"success"
        assert entry["run_uid"][()].decode() == report["run_uid"]
        data = entry["data"]
        assert data.attrs["signal"] == "sequencer_bright_fraction"
        assert list(data.attrs["axes"]) == ["point_spectroscopy_detuning"]
        assert data["point_index"][:].tolist() == list(range(11))
        assert data["sequencer_counts"].shape == (11, 8)
        assert data["bundle_complete"][:].all()
        assert "field_field" in data  # the async monitor, joined by time
        assert entry["sequences/point_sequence"].shape == (11,)
        assert entry["sequences/hash"].shape == (11,)  # every detuning is its own sequence
        assert entry["analysis/center"][()] == pytest.approx(report["analysis"]["center"])
        assert entry["parameters/qubit_frequency/value"][()] > 12e9
        assert "baseline" in entry["streams"]
    uid = report["run_uid"]
    assert report["tiled"] == f"sqlite:///{(home / 'tiled' / 'catalog.db').resolve()}#/{uid}"
    catalog = open_embedded_catalog(home.resolve())
    try:
        assert list(catalog.client.search(Key("start.experiment") == "spectroscopy")) == [uid]
        run = catalog.client[uid]
        assert run[BUNDLED].read()["point-index"].values.tolist() == list(range(11))
        assert run.metadata["orchestrion"]["hdf5"] == report["hdf5"]
        assert run.metadata["orchestrion"]["analysis"]["center"] == pytest.approx(report["analysis"]["center"])
    finally:
        catalog.close()


def test_an_embedded_session_writes_one_file_per_run(config: OrchestrionConfig) -> None:
    session = EmbeddedSession(config.model_copy(update={"tiled_enabled": False}))
    try:
        first = session.run(
            RunRequest(experiment="rabi_flop", scan=("rabi_flop.duration=0:40e-6:9",), shots=5, md={"job_id": "j-1"})
        )
        second = session.run(RunRequest(experiment="ramsey", scan=("ramsey.wait=0:200e-6:7",), shots=5))
    finally:
        session.close()
    assert first.tiled is None
    assert first.hdf5 is not None
    assert second.hdf5 is not None
    assert first.hdf5 != second.hdf5
    with h5py.File(first.hdf5, "r") as f:
        assert f["entry/job_id"][()].decode() == "j-1"
        assert f["entry/points"][()] == 9
    with h5py.File(second.hdf5, "r") as f:
        assert f["entry/experiment"][()].decode() == "ramsey"
        assert f["entry/points"][()] == 7


def test_an_embedded_session_with_tiled_has_the_run_catalogued_when_run_returns(config: OrchestrionConfig) -> None:
    session = EmbeddedSession(config)
    try:
        summary = session.run(RunRequest(experiment="rabi_flop", scan=("rabi_flop.duration=0:40e-6:6",), shots=5))
        assert summary.tiled is not None
        assert summary.tiled.endswith(f"#/{summary.run_uid}")
    finally:
        session.close()
    catalog = open_embedded_catalog(config.home)
    try:
        run = catalog.client[summary.run_uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run.metadata["orchestrion"]["hdf5"] == summary.hdf5
    finally:
        catalog.close()


def test_the_helper_process_acknowledges_runs_whatever_its_stage_prints() -> None:
    run = compose_run()
    # functools.partial(print): a stage that writes every document to its stdout.
    sink = ProcessSink(functools.partial, print, "echo")
    try:
        sink("start", dict(run.start_doc))
        sink("stop", dict(run.compose_stop()))  # returns once handed over
        assert sink.wait_catalogued(run.start_doc["uid"], timeout=120)
        assert sink.wait_catalogued(timeout=1)  # nothing outstanding
    finally:
        sink.close()


def test_a_helper_started_ahead_is_the_one_the_sink_uses() -> None:
    """`start_helper` (what `orchestrion run` calls first) starts the process a sink adopts."""
    start_helper(0, ("json",))
    (ahead,) = _offload._ahead.values()
    run = compose_run()
    sink = ProcessSink(functools.partial, print, "echo", preload=("json",))
    try:
        assert sink._helper.process is ahead  # adopted: not a second interpreter
        assert not _offload._ahead
        sink("start", dict(run.start_doc))
        sink("stop", dict(run.compose_stop()))
        assert sink.wait_catalogued(run.start_doc["uid"], timeout=120)
    finally:
        sink.close()
    assert ahead.returncode == 0  # it ended by itself once its input closed


def test_a_helper_started_ahead_and_not_adopted_is_ended_at_exit() -> None:
    start_helper(0, ("json", "csv"))
    (ahead,) = _offload._ahead.values()
    _offload._end_helpers_ahead()  # what the exit handler does
    assert ahead.returncode is not None
    assert not _offload._ahead


def test_a_helper_whose_stage_cannot_be_built_fails_the_run_instead_of_hanging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = compose_run()
    sink = ProcessSink(int, "not a number", "broken")  # int("not a number") raises
    refusals: list[str] = []
    try:
        # Depending on how far the helper got, it refuses the documents outright...
        for name, doc in [("start", run.start_doc), ("stop", run.compose_stop())]:
            try:
                sink(name, dict(doc))
            except RuntimeError as exc:
                refusals.append(str(exc))
        # ...or takes them and says the run was not catalogued: never a hang.
        assert not sink.wait_catalogued(run.start_doc["uid"], timeout=120)
    finally:
        sink.close()
    assert all("helper process" in text for text in refusals)
    assert refusals or "invalid literal for int()" in caplog.text
    assert "ValueError" in caplog.text


_KILLED_AFTER_ITS_RUNS = """
import os, signal, sys
from pathlib import Path

import bluesky.plans as bp
from bluesky import RunEngine
from ophyd.sim import det, motor

from orchestrion.config import load_config
from orchestrion.pipeline import build_pipeline

pipeline = build_pipeline(load_config(home=Path(sys.argv[1])))
RE = RunEngine({})
pipeline.subscribe(RE)
uids = RE(bp.scan([det], motor, -1, 1, 300)) + RE(bp.count([det], 50))
print(pipeline.catalog_stage._helper.process.pid, *uids, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no wait: dead the moment the runs stopped
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_runs_stopped_before_the_process_dies_are_still_catalogued(home: Path) -> None:
    script = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_ITS_RUNS, str(home)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert script.returncode == -9, script.stderr
    helper, *uids = script.stdout.split()
    # The helper outlives the process that fed it, writes what it was handed, and exits.
    wait_until(lambda: not _running(int(helper)), timeout=120, what="the orphaned Tiled helper to finish and exit")
    catalog = open_embedded_catalog(home)
    try:
        scan, count = (catalog.client[uid] for uid in uids)
        assert scan.metadata["stop"]["exit_status"] == "success"
        assert len(scan["primary"].read()["det"]) == 300
        assert len(scan[BUNDLED].read()["det"]) == 300
        assert Path(scan.metadata["orchestrion"]["hdf5"]).exists()
        assert count.metadata["stop"]["num_events"]["primary"] == 50
    finally:
        catalog.close()


def _sim_pipeline(config: OrchestrionConfig) -> tuple[DocumentPipeline, RunEngine]:
    pipeline = build_pipeline(config.model_copy(update={"tiled_enabled": False}))
    RE = RunEngine({})
    pipeline.subscribe(RE)
    return pipeline, RE


def _helper_of(pipeline: DocumentPipeline) -> subprocess.Popen[bytes]:
    stage = pipeline.catalog_stage
    assert isinstance(stage, ProcessSink)
    return stage._helper.process


def test_a_post_processing_process_that_dies_between_runs_is_replaced_at_the_next(
    config: OrchestrionConfig,
) -> None:
    pipeline, RE = _sim_pipeline(config)
    try:
        (first,) = RE(bp.count([det], 3))
        assert pipeline.wait_catalogued(first, timeout=120)
        dead = _helper_of(pipeline)
        dead.kill()
        dead.wait()
        (second,) = RE(bp.count([det], 4))  # its start document starts a new helper
        assert pipeline.wait_catalogued(second, timeout=120)
        assert pipeline.wait_catalogued(timeout=1)  # every run so far was written
        assert _helper_of(pipeline).pid != dead.pid
    finally:
        pipeline.close()
    for uid, points in ((first, 3), (second, 4)):
        path = pipeline.summaries.runs[uid].hdf5
        assert path is not None
        with h5py.File(path, "r") as f:
            assert f["entry/status"][()] == b"success"
            assert f["entry/points"][()] == points


def test_a_run_whose_post_processing_process_dies_is_taken_over_and_written_whole(
    config: OrchestrionConfig, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, RE = _sim_pipeline(config)  # HDF5 only: the spool is what the successor has

    def killed_midway() -> Generator[Msg, Any, str]:
        uid: str = yield from bps.open_run()
        for _ in range(3):
            yield from bps.trigger_and_read([det])
        summary = pipeline.summaries.runs[uid]
        # Killed once the helper has the run's file open and its first points in it.
        wait_until(lambda: summary.hdf5 is not None and Path(summary.hdf5).exists(), timeout=120, what="the file")
        helper = _helper_of(pipeline)
        helper.kill()
        helper.wait()
        for _ in range(2):
            yield from bps.trigger_and_read([det])
        yield from bps.close_run()
        return uid

    try:
        (taken_over,) = RE(killed_midway())
        assert pipeline.wait_catalogued(taken_over, timeout=120)
        (after,) = RE(bp.count([det], 2))
        assert pipeline.wait_catalogued(after, timeout=120)
    finally:
        pipeline.close()
    assert "takes over" in caplog.text
    # One file under the run's name with all five points, closed as a success.
    summary = pipeline.summaries.runs[taken_over]
    assert (summary.status, summary.points) == ("success", 5)
    assert summary.hdf5 is not None
    with h5py.File(summary.hdf5, "r") as f:
        assert f["entry/status"][()] == b"success"
        assert f["entry/points"][()] == 5
        assert f["entry/data/seq_num"][:].tolist() == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in Path(summary.hdf5).parent.iterdir() if ".h5" in p.name) == sorted(
        Path(pipeline.summaries.runs[uid].hdf5 or "").name for uid in (taken_over, after)
    )
    assert list((config.home / "spool").glob("*")) == []


def _niceness_of_threads(pid: int) -> set[int]:
    # Field 19 of /proc/PID/task/TID/stat, counted after the command name's parenthesis.
    return {int(stat.read_text().rsplit(")", 1)[1].split()[16]) for stat in Path(f"/proc/{pid}/task").glob("*/stat")}


def test_the_post_processing_process_yields_the_cpu_to_the_runengine(config: OrchestrionConfig) -> None:
    pipeline = build_pipeline(config.model_copy(update={"post_processing_niceness": 7}))
    try:
        stage = pipeline.catalog_stage
        assert isinstance(stage, ProcessSink)
        # Once its stage is built, every thread it started (the catalog's too) is as nice.
        wait_until(lambda: stage._helper.ready, timeout=120, what="the post-processing stage to be built")
        assert _niceness_of_threads(stage._helper.process.pid) == {7}
        assert _niceness_of_threads(os.getpid()) == {os.nice(0)}  # this process is untouched
    finally:
        pipeline.close()


def test_runs_are_still_written_to_hdf5_when_the_catalog_cannot_be_reached(config: OrchestrionConfig) -> None:
    port = free_port()  # nothing listens there
    pipeline = build_pipeline(config.model_copy(update={"tiled_uri": f"http://127.0.0.1:{port}"}))
    RE = RunEngine({})
    pipeline.subscribe(RE)
    try:
        (uid,) = RE(bp.count([det], 3))
        assert pipeline.wait_catalogued(uid, timeout=240)  # written: to HDF5 only
    finally:
        pipeline.close()
    summary = pipeline.summaries.runs[uid]
    assert summary.tiled is None
    assert summary.hdf5 is not None
    with h5py.File(summary.hdf5, "r") as f:
        assert f["entry/status"][()] == b"success"
        assert f["entry/points"][()] == 3
