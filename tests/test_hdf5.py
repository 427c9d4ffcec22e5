"""The HDF5 writer: NeXus layout, read back with h5py and nexusformat, live and after a crash."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np
import pytest
from event_model import compose_run
from nexusformat.nexus import nxload

from orchestrion.config import OrchestrionConfig
from orchestrion.pipeline import (
    InstrumentPlugin,
    RunDocuments,
    Serializer,
    build_post_processing,
    file_name_for,
    load_plugins,
    recover_incomplete,
)
from orchestrion.schema import POINT_SEQUENCE_KEY_MD

from .pipeline_docs import fake_run, sequence_hash, sequence_json, whole_run
from .support import wait_until

REPO = Path(__file__).resolve().parents[1]
FIT = {"center": 1234.5, "center_err": 12.0, "contrast": 0.9, "contrast_err": 0.01}


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PostProcessing:
    """`build_post_processing` without a catalog, and what it reports."""

    def __init__(self, home: Path) -> None:
        self.notes: list[dict[str, Any]] = []
        self.config = OrchestrionConfig(home=home, tiled_enabled=False)  # type: ignore[call-arg]
        self.stage = build_post_processing(self.config, self.notes.append)
        self.files: dict[str, Path] = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.stage(name, doc)
        self.files.update({n["run"]: Path(n["hdf5"]) for n in self.notes if "hdf5" in n})

    def outcome(self, run_uid: str) -> dict[str, Any]:
        (outcome,) = [n["outcome"] for n in self.notes if n["run"] == run_uid and "outcome" in n]
        return dict(outcome)

    def close(self) -> None:
        getattr(self.stage, "close")()  # noqa: B009 - a plain callable's optional close


def write_run(directory: Path, points: int = 12, **options: Any) -> Path:
    with Serializer(directory, **options) as serializer:
        for name, doc in whole_run(points, fit=FIT):
            serializer(name, doc)
    (path,) = serializer.artifacts["stream_data"]
    return path


def test_a_run_becomes_one_nexus_file(tmp_path: Path) -> None:
    path = write_run(tmp_path, points=12, buffer_points=5)
    assert path.parent == tmp_path.resolve()
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert text(entry["status"][()]) == "success"
        assert entry["points"][()] == 12
        assert text(entry["experiment"][()]) == "spectroscopy"
        assert text(entry["job_id"][()]) == "job-42"
        assert entry["scan_id"][()] == 7
        assert text(entry["start_time"][()])
        assert text(entry["end_time"][()])
        start = json.loads(text(entry["metadata/start"][()]))
        assert text(entry["run_uid"][()]) == start["uid"]
        assert json.loads(text(entry["metadata/stop"][()]))["exit_status"] == "success"
        # The default plot: signal and axes.
        assert f.attrs["default"] == "entry"
        assert entry.attrs["default"] == "data"
        data = entry["data"]
        assert data.attrs["NX_class"] == "NXdata"
        assert data.attrs["signal"] == "sequencer_bright_fraction"
        assert list(data.attrs["axes"]) == ["point_qubit_detuning"]
        assert data["point_index"][:].tolist() == list(range(12))
        assert data["point_qubit_detuning"].attrs["units"] == "Hz"
        # Per-shot counts: points x shots, also as their own NXdata.
        assert data["sequencer_counts"].shape == (12, 4)
        assert data["sequencer_counts"][3].tolist() == [3, 4, 5, 6]
        assert entry["shots/sequencer_counts"].shape == (12, 4)
        assert list(entry["shots"].attrs["axes"]) == ["point_qubit_detuning", "shot"]
        # The parameter snapshot: value and timestamp per id.
        threshold = entry["parameters/detection_threshold"]
        assert threshold.attrs["id"] == "detection.threshold"
        assert threshold["value"][()] == 5
        assert threshold.attrs["timestamp"] == "2026-01-02T00:00:00+00:00"
        assert threshold.attrs["source"] == "calibration"
        assert entry["parameters/qubit_frequency/value"][()] == pytest.approx(12.6428e9)
        # Sequences: five distinct ones stored once, and which one each point ran.
        sequences = entry["sequences"]
        assert sequences["hash"].shape == (5,)
        rows = sequences["point_sequence"][:]
        assert rows.tolist() == [i % 5 for i in range(12)]
        for point, row in enumerate(rows):
            stored = text(sequences["json"][row])
            assert sequence_hash(stored) == text(data["sequencer_sequence_hash"][point])
            assert stored == sequence_json(-2e3 + 1e3 * (point % 5))
        # Fit results and the other streams.
        assert entry["analysis/center"][()] == pytest.approx(1234.5)
        assert entry["analysis/center_err"][()] == pytest.approx(12.0)
        assert entry["streams/baseline/rf_frequency_readback"][:].tolist() == [200e6, 200e6 + 1]
        assert "sequences" not in entry["streams"]
        # The built-in plugin (entry point) describes the instrument.
        assert entry["instrument"].attrs["NX_class"] == "NXinstrument"
    assert not list((tmp_path / ".writing").glob("*.lock"))


def test_a_generic_nexus_reader_finds_the_default_plot(tmp_path: Path) -> None:
    root = nxload(str(write_run(tmp_path)))
    plot = root.plottable_data
    assert plot is not None
    assert plot.nxsignal.nxname == "sequencer_bright_fraction"
    assert [axis.nxname for axis in plot.nxaxes] == ["point_qubit_detuning"]
    assert plot.nxsignal.shape == (12,)


def test_file_names_carry_date_scan_and_experiment_and_stay_in_the_directory(tmp_path: Path) -> None:
    start = dict(next(iter(fake_run().head()))[1])
    name = file_name_for(start)
    assert "scan7" in name
    assert "spectroscopy" in name
    assert name.startswith(datetime.fromtimestamp(start["time"]).strftime("%Y%m%d-"))
    for hostile in ("../../etc/passwd", "/abs/path", "..", "a/../../b", "nul\x00l", ""):
        start["experiment"] = hostile
        name = file_name_for(start, "{experiment}")
        assert "/" not in name
        assert not name.startswith(".")
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    # A whole run with hostile metadata writes its file inside the directory.
    with Serializer(tmp_path / "data", file_prefix="{experiment}") as serializer:
        for name, doc in whole_run(2, experiment="../../escaped"):
            serializer(name, doc)
    (path,) = serializer.artifacts["stream_data"]
    assert path.parent == (tmp_path / "data").resolve()
    assert path.name == "escaped.h5"
    # Metadata in the template, and a template that does not fit this run.
    assert file_name_for({**start, "sample": "a/b"}, "{start[sample]}") == "a_b.h5"
    assert "scan7" in file_name_for(start, "{start[missing]}")


def test_two_runs_with_the_same_name_get_two_files(tmp_path: Path) -> None:
    first = write_run(tmp_path, points=2, file_prefix="{experiment}")
    second = write_run(tmp_path, points=2, file_prefix="{experiment}")
    assert first != second
    assert {first.name, second.name} == {"spectroscopy.h5", "spectroscopy-1.h5"}


class RecordingPlugin:
    def start(self, entry: h5py.Group, start: dict[str, Any]) -> None:
        entry.create_dataset("lab_sample", data=str(start.get("sample", "")))

    def stop(self, entry: h5py.Group, run: RunDocuments) -> None:
        entry.create_dataset("lab_streams", data=",".join(sorted(run.descriptors)))


class BrokenPlugin:
    def start(self, entry: h5py.Group, start: dict[str, Any]) -> None:
        raise RuntimeError("plugin bug")

    def stop(self, entry: h5py.Group, run: RunDocuments) -> None:
        raise RuntimeError("plugin bug")


def test_plugins_extend_the_layout_and_cannot_break_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert any(isinstance(p, InstrumentPlugin) for p in load_plugins())
    with Serializer(tmp_path, plugins=[BrokenPlugin(), RecordingPlugin()]) as serializer:
        for name, doc in whole_run(3, fit=FIT, sample="Ca40"):
            serializer(name, doc)
    assert "plugin bug" in caplog.text
    with h5py.File(serializer.artifacts["stream_data"][0], "r") as f:
        assert text(f["entry/lab_sample"][()]) == "Ca40"
        assert text(f["entry/lab_streams"][()]) == "analysis,baseline,primary,sequences"
        assert text(f["entry/status"][()]) == "success"


def test_bad_documents_close_that_runs_file_marked_and_other_runs_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    writer = PostProcessing(tmp_path)
    files = writer.files
    good, bad = fake_run(), fake_run()
    for name, doc in [*good.head(), *bad.head()]:
        writer(name, doc)
    for index in range(3):
        for name, doc in good.point(index):
            writer(name, doc)
    replayed = None
    for name, doc in bad.point(0):
        writer(name, doc)
        replayed = (name, doc)
    assert replayed is not None
    writer(*replayed)  # the same event uid twice
    assert f"run {bad.uid}: event uid {replayed[1]['uid']} is used twice" in caplog.text
    for name, doc in bad.point(1):  # later documents of the broken run are ignored
        writer(name, doc)
    for index in range(3, 6):
        for name, doc in good.point(index):
            writer(name, doc)
    for name, doc in good.tail():
        writer(name, doc)
    # An event of a descriptor nobody announced, and the stop of a run nobody started.
    stray = fake_run()
    writer("event", next(d for n, d in stray.point(0) if n == "event"))
    writer("stop", dict(stray.run.compose_stop()))
    assert "unknown descriptor" in caplog.text
    assert f"run {stray.uid}: stop arrived before the run's start document" in caplog.text
    with h5py.File(files[bad.uid], "r") as f:  # closed consistent: a plain reader opens it
        assert text(f["entry/status"][()]) == "error"
        assert "used twice" in text(f["entry/reason"][()])
        assert f["entry/points"][()] == 1
    with h5py.File(files[good.uid], "r") as f:
        assert text(f["entry/status"][()]) == "success"
        assert f["entry/data/point_index"][:].tolist() == list(range(6))
    assert len(list(writer.config.data_dir.glob("*.h5"))) == 2
    assert writer.outcome(good.uid)["status"] == "success"
    assert writer.outcome(good.uid)["points"] == 6
    # The broken run is reported as such, with what its file holds, when it ends.
    writer.close()
    broken = writer.outcome(bad.uid)
    assert broken["status"] == "incomplete"
    assert broken["points"] == 1
    assert any("used twice" in problem for problem in broken["problems"])


def test_closing_the_writer_mid_run_marks_the_file_incomplete(tmp_path: Path) -> None:
    writer = PostProcessing(tmp_path)
    run = fake_run()
    for name, doc in [*run.head(), *run.point(0), *run.point(1)]:
        writer(name, doc)
    writer.close()
    with h5py.File(writer.files[run.uid], "r") as f:
        assert text(f["entry/status"][()]) == "incomplete"
        assert f["entry/points"][()] == 2
    outcome = writer.outcome(run.uid)
    assert (outcome["status"], outcome["points"]) == ("incomplete", 2)


READER = textwrap.dedent(
    """
    import sys, time, h5py
    path, progress = sys.argv[1], sys.argv[2]
    seen = -1
    with h5py.File(path, "r", swmr=True) as f:
        index = f["entry/data/point_index"]
        while True:
            index.refresh()
            n = index.shape[0]
            if n != seen:
                seen = n
                values = index[:].tolist()
                assert values == list(range(n)), values
                with open(progress, "a") as out:
                    out.write(f"{n}\\n")
            if n >= 20:
                break
            time.sleep(0.005)
    """
)


def test_another_process_reads_the_file_while_the_run_writes_it(tmp_path: Path) -> None:
    run = fake_run(detunings=5)
    serializer = Serializer(tmp_path, buffer_points=10, flush_interval=3600)
    for name, doc in run.head():
        serializer(name, doc)
    for name, doc in run.point(0):
        serializer(name, doc)
    path = serializer.artifacts["stream_data"][0]
    progress = tmp_path / "progress.txt"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(progress)])
    try:
        seen = lambda: [int(x) for x in progress.read_text().split()] if progress.exists() else []  # noqa: E731
        wait_until(lambda: seen(), timeout=30, what="the reader to open the file")
        for index in range(1, 10):
            for name, doc in run.point(index):
                serializer(name, doc)
        wait_until(lambda: 10 in seen(), timeout=30, what="the reader to see the first 10 points")
        for index in range(10, 20):
            for name, doc in run.point(index):
                serializer(name, doc)
        wait_until(lambda: 20 in seen(), timeout=30, what="the reader to see 20 points")
        assert reader.wait(timeout=30) == 0
        # It saw the points in buffer-sized steps while the writer still had the file open.
        assert seen() == [0, 10, 20]
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    for name, doc in run.tail():
        serializer(name, doc)
    with h5py.File(path, "r") as f:
        assert f["entry/points"][()] == 20


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from orchestrion.pipeline import Serializer
    from tests.pipeline_docs import fake_run
    run = fake_run(detunings=5)
    serializer = Serializer(sys.argv[1], buffer_points=5, flush_interval=3600)
    for name, doc in run.head():
        serializer(name, doc)
    print(serializer.artifacts["stream_data"][0], flush=True)
    index = 0
    while True:
        for name, doc in run.point(index):
            serializer(name, doc)
        index += 1
        if index % 5 == 0:  # the buffer of 5 points was just written
            print(index, flush=True)
        time.sleep(0.002)
    """
)


@contextlib.contextmanager
def writer_process(script: str, data: Path) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """``script`` run with (data directory, repository) in a process of its own, and its
    stdout's lines; killed at the end if it is still running."""
    writer = subprocess.Popen([sys.executable, "-c", script, str(data), str(REPO)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    try:
        yield writer, writer.stdout
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait()
        writer.stdout.close()


def test_a_writer_killed_mid_run_leaves_a_readable_file_with_every_flushed_point(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with writer_process(WRITER, data) as (writer, lines):
        path = Path(lines.readline().strip())
        flushed = 0
        while flushed < 40:
            flushed = int(lines.readline())
        # The lock of a live writer keeps recovery away from its file.
        assert recover_incomplete(data) == []
        writer.kill()  # SIGKILL
        writer.wait(timeout=30)
    with h5py.File(path, "r", swmr=True) as f:
        points = f["entry/data/point_index"][:]
        assert text(f["entry/status"][()]) == "running"
    assert len(points) >= flushed
    assert points.tolist() == list(range(len(points)))
    # Recovery: a plain readable file, marked incomplete, every point kept.
    assert recover_incomplete(data) == [path]
    with h5py.File(path, "r") as f:
        assert text(f["entry/status"][()]) == "incomplete"
        assert f["entry/points"][()] == len(points)
        assert np.array_equal(f["entry/data/point_index"][:], points)
        assert f["entry/data"].attrs["signal"] == "sequencer_bright_fraction"
        assert f["entry/data/point_qubit_detuning"].shape == (len(points),)
    assert recover_incomplete(data) == []


CREATING_WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from orchestrion.pipeline import Serializer
    from tests.pipeline_docs import fake_run

    class Stuck:  # a lab plugin that never returns from the file's creation
        def start(self, entry, start):
            print("creating", flush=True)
            time.sleep(3600)

        def stop(self, entry, run):
            pass

    run = fake_run(detunings=5)
    serializer = Serializer(sys.argv[1], plugins=[Stuck()])
    for name, doc in run.head():
        serializer(name, doc)
    """
)


def test_a_writer_killed_while_creating_its_file_leaves_no_torn_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with writer_process(CREATING_WRITER, data) as (writer, lines):
        assert lines.readline().strip() == "creating"
        writer.kill()  # SIGKILL
        writer.wait(timeout=30)
    # Killed mid-creation: nothing under a run's name, only the hidden file being made.
    assert [p.name for p in data.glob("*.h5")] == []
    assert len(list(data.glob(".*.h5.creating"))) == 1
    assert recover_incomplete(data) == []  # nothing measured to recover: the torn file goes
    assert list(data.glob(".*.creating")) == []
    assert list((data / ".writing").glob("*.lock")) == []


def test_large_array_points_are_written_row_by_row_and_read_back_whole(tmp_path: Path) -> None:
    run = compose_run(metadata={"experiment": "camera"})
    key = {"dtype": "array", "shape": [100, 300], "dtype_numpy": "<f8", "source": "sim://camera"}
    primary = run.compose_descriptor(
        name="primary", data_keys={"image": key, "point-index": {"dtype": "integer", "shape": [], "source": "x"}}
    )
    images = [np.random.default_rng(n).random((100, 300)) for n in range(5)]
    with Serializer(tmp_path, buffer_points=2) as serializer:
        serializer("start", dict(run.start_doc))
        serializer("descriptor", dict(primary.descriptor_doc))
        for n, image in enumerate(images):
            event = primary.compose_event(
                data={"image": image, "point-index": n}, timestamps={"image": 0.0, "point-index": 0.0}, validate=False
            )
            serializer("event", dict(event))
        serializer("stop", dict(run.compose_stop()))
    with h5py.File(serializer.artifacts["stream_data"][0], "r") as f:
        stored = f["entry/data/image"]
        assert stored.shape == (5, 100, 300)
        assert stored.chunks[1:] == (100, 300)
        assert math.prod(stored.chunks) * 8 <= 1 << 20  # chunks of at most 1 MiB
        for n, image in enumerate(images):
            assert np.array_equal(stored[n], image)


HOLDING_READER = textwrap.dedent(
    """
    import sys, time, h5py
    from pathlib import Path
    path, progress, release = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    with h5py.File(path, "r", swmr=True) as f:  # held open, as a live plot would
        index = f["entry/data/point_index"]
        while not release.exists():
            index.refresh()
            progress.write_text(str(index.shape[0]))
            time.sleep(0.01)
    """
)


def test_a_live_reader_that_keeps_the_file_open_costs_no_point(tmp_path: Path) -> None:
    writer = PostProcessing(tmp_path)
    run = fake_run(detunings=5)
    for name, doc in [*run.head(), *run.point(0), *run.point(1)]:
        writer(name, doc)
    path = writer.files[run.uid]
    progress, release = tmp_path / "progress.txt", tmp_path / "release"
    reader = subprocess.Popen([sys.executable, "-c", HOLDING_READER, str(path), str(progress), str(release)])
    try:
        wait_until(lambda: progress.exists(), timeout=60, what="the reader to open the file")
        for index in range(2, 30):
            for name, doc in run.point(index):
                writer(name, doc)
        for name, doc in run.tail(FIT):  # the stop, while the reader still holds the file
            writer(name, doc)
        wait_until(lambda: progress.read_text() == "30", timeout=60, what="the reader to see every point")
        assert reader.poll() is None  # it is still reading
        outcome = writer.outcome(run.uid)
        assert (outcome["status"], outcome["points"], outcome["problems"]) == ("success", 30, [])
    finally:
        release.touch()
        assert reader.wait(timeout=60) == 0
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert text(entry["status"][()]) == "success"
        assert entry["points"][()] == 30
        assert entry["data/point_index"][:].tolist() == list(range(30))
        assert entry["analysis/center"][()] == pytest.approx(1234.5)
        assert "baseline" in entry["streams"]


def test_a_long_run_is_written_in_bounded_memory(tmp_path: Path) -> None:
    """The writer keeps what is not in the file yet, not the run: rows of the streams it
    does not write (``primary`` beside the bundled points) are not kept, and sequences'
    texts go once written."""
    run = compose_run(metadata={POINT_SEQUENCE_KEY_MD: "sequence-hash"})
    keys = {"point-index": {"dtype": "integer", "shape": [], "source": "sim://index"},
            "det-value": {"dtype": "number", "shape": [], "source": "sim://det"},
            "sequence-hash": {"dtype": "string", "shape": [], "source": "sim://hash"}}  # fmt: skip
    raw, points = (
        run.compose_descriptor(name="primary", data_keys=keys),
        run.compose_descriptor(name="points", data_keys=keys),
    )
    sequences = run.compose_descriptor(name="sequences", data_keys={
        "sequence-hash": {"dtype": "string", "shape": [], "source": "x"},
        "sequence-json": {"dtype": "string", "shape": [], "source": "x"}})  # fmt: skip
    serializer = Serializer(tmp_path, data_stream="points", skip_streams=("primary",), buffer_points=64)
    for name, doc in [("start", run.start_doc), ("descriptor", sequences.descriptor_doc),
                      ("descriptor", raw.descriptor_doc), ("descriptor", points.descriptor_doc)]:  # fmt: skip
        serializer(name, dict(doc))

    def feed(first: int, last: int) -> None:
        for n in range(first, last):
            digest = f"{n % 50:064x}"  # 50 distinct sequences, each once in the file
            if n < 50:
                data = {"sequence-hash": digest, "sequence-json": json.dumps({"point": n, "pad": "x" * 500})}
                serializer("event", {"uid": str(uuid.uuid4()), "descriptor": sequences.descriptor_doc["uid"],
                                     "seq_num": n + 1, "time": 1.0, "data": data, "timestamps": {},
                                     "filled": {}})  # fmt: skip
            data = {"point-index": n, "det-value": float(n), "sequence-hash": digest}
            for descriptor in (raw, points):
                serializer("event", {"uid": str(uuid.uuid4()), "descriptor": descriptor.descriptor_doc["uid"],
                                     "seq_num": n + 1, "time": 1.0 + n, "data": dict(data),
                                     "timestamps": dict.fromkeys(data, 1.0 + n), "filled": {}})  # fmt: skip

    gc.collect()
    tracemalloc.start()
    try:
        feed(0, 5_000)
        gc.collect()
        before = tracemalloc.take_snapshot()
        feed(5_000, 15_000)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # About 500 bytes per point when every primary row was kept until the stop.
    assert sum(s.size_diff for s in after.compare_to(before, "filename")) / 10_000 < 8
    serializer("stop", dict(run.compose_stop()))
    with h5py.File(serializer.path, "r") as f:
        entry = f["entry"]
        assert entry["points"][()] == 15_000
        assert entry["data/point_index"][:].tolist() == list(range(15_000))
        assert entry["sequences/hash"].shape == (50,)
        assert entry["sequences/point_sequence"][:].tolist() == [n % 50 for n in range(15_000)]
        assert json.loads(text(entry["sequences/json"][7]))["point"] == 7
        assert "primary" not in entry["streams"]


DURABLE_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from orchestrion.pipeline import Serializer
    from tests.pipeline_docs import whole_run
    with Serializer(sys.argv[1]) as serializer:
        for name, doc in whole_run(12):
            serializer(name, doc)
    assert serializer.outcome is not None and not serializer.outcome.problems
    print(serializer.outcome.path, flush=True)
    """
)


def test_a_finished_file_and_its_name_are_fsynced_before_the_outcome(tmp_path: Path) -> None:
    """The file a run reports written survives a power cut: its data and its directory entry
    (made by a rename) are on disk, each fsynced, before the outcome is known (strace of a
    real writer process)."""
    trace = tmp_path / "strace.txt"
    data = tmp_path / "data"
    writer = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=openat,fsync,rename,renameat,renameat2", "-o", str(trace),
         sys.executable, "-c", DURABLE_WRITER, str(data), str(Path(__file__).resolve().parent.parent)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    path = Path(writer.stdout.strip())
    opened: dict[str, str] = {}  # fd -> the path it was last opened for
    synced: list[str] = []
    renamed_at = synced_at = -1
    for number, line in enumerate(trace.read_text().splitlines()):
        call = line.split(None, 1)[1] if line[:1].isdigit() else line
        if call.startswith("openat(") and '"' in call and "= " in call:
            result = call.rsplit("= ", 1)[1].split()[0]
            if result.isdigit():
                opened[result] = call.split('"')[1]
        elif call.startswith("fsync("):
            synced.append(opened.get(call[6:].split(")")[0], "?"))
            if synced[-1] == str(path):
                synced_at = number
        elif call.startswith("rename") and f'"{path}"' in call:
            renamed_at = number
    assert str(path) in synced, f"the run's file was not fsynced: {synced}"
    assert str(path.parent) in synced, f"its directory was not fsynced: {synced}"
    assert synced_at > renamed_at >= 0  # fsynced after it took its name


def test_a_run_missing_a_point_the_runengine_made_is_not_a_success(tmp_path: Path) -> None:
    # A point lost between the RunEngine and the writer (found: a take-over that dropped a
    # detector's point) leaves a file that is consistent in itself; only the stop
    # document's num_events tells that it is short.
    writer = PostProcessing(tmp_path)
    run = fake_run()
    for name, doc in run.head():
        writer(name, doc)
    for index in range(5):
        for name, doc in run.point(index):
            if not (index == 2 and name == "event"):
                writer(name, doc)
    for name, doc in run.tail():
        writer(name, doc)
    writer.close()
    outcome = writer.outcome(run.uid)
    assert (outcome["status"], outcome["points"]) == ("incomplete", 4)
    (problem,) = [p for p in outcome["problems"] if "lost on the way" in p]
    assert "stream 'primary' has 4 of its 5 events (seq_num 3 never arrived)" in problem
    with h5py.File(writer.files[run.uid], "r") as f:  # the file says so to any reader
        assert f["entry/points"][()] == 4
        assert text(f["entry/status"][()]) == "incomplete"
        assert "stream 'primary' has 4 of its 5 events (seq_num 3 never arrived)" in text(f["entry/reason"][()])
