"""Runs in a Tiled catalog: a served one (with an API key) and the embedded persistent one."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import httpx
import pytest
from tiled.client import from_uri
from tiled.queries import Key

from orchestrion.config import OrchestrionConfig
from orchestrion.pipeline import BUNDLED, build_pipeline, build_post_processing, open_embedded_catalog
from orchestrion.pipeline._tiled import RunCatalogWriter, catalog_rows, run_batch_size
from orchestrion.pipeline._tiled_app import StreamClosesAnswered

from .pipeline_docs import fake_run, whole_run
from .support import free_port, stop_process, wait_until

TILED = Path(sys.executable).with_name("tiled")
FIT = {"center": 1234.5, "center_err": 12.0}


@dataclass
class TiledServer:
    uri: str
    api_key: str
    root: Path


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TiledServer]:
    """`tiled serve catalog` with file and SQL table storage, on a free loopback port."""
    root = tmp_path_factory.mktemp("tiled")
    (root / "data").mkdir()
    port, key = free_port(), secrets.token_hex(16)
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [
            str(TILED), "serve", "catalog", str(root / "catalog.db"), "--init",
            "-w", str(root / "data"), "-w", f"sqlite:///{root / 'tables.db'}",
            "--api-key", key, "--host", "127.0.0.1", "--port", str(port),
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: server.poll() is None and httpx.get(f"{uri}/api/v1/", timeout=1).status_code == 200,
            timeout=90, what="the tiled server",
        )  # fmt: skip
        yield TiledServer(uri, key, root)
    finally:
        stop_process(server)
        log.close()


class PostProcessing:
    """`build_post_processing` as a transport feeds it, and what it reports."""

    def __init__(self, config: OrchestrionConfig) -> None:
        self.notes: list[dict[str, Any]] = []
        self.stage = build_post_processing(config, self.notes.append)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.stage(name, doc)

    def noted(self, key: str) -> dict[str, Any]:
        return {n["run"]: n[key] for n in self.notes if key in n}

    def close(self) -> None:
        getattr(self.stage, "close")()  # noqa: B009 - a plain callable's optional close


def test_runs_are_catalogued_in_a_served_tiled_and_found_by_their_metadata(
    tiled_server: TiledServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = OrchestrionConfig(home=tmp_path, tiled_uri=tiled_server.uri, tiled_api_key=tiled_server.api_key)  # type: ignore[arg-type]
    bundler = PostProcessing(config)
    before = time.time()
    uids = []
    for experiment, job, points in (("spectroscopy", "job-1", 23), ("ramsey", "job-2", 5)):
        docs = list(whole_run(points, fit=FIT, experiment=experiment, job_id=job))
        uids.append(docs[0][1]["uid"])
        for name, doc in docs:
            bundler(name, doc)
    outcomes = bundler.noted("outcome")
    bundler.close()

    client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    assert uids[0] in client
    address = bundler.noted("tiled")[uids[0]]
    assert address == f"{tiled_server.uri}/api/v1/metadata/{uids[0]}"
    # What post-processing reports of each run is what it read back from file and catalog.
    assert {uid: (o["status"], o["points"], o["catalog_rows"], o["tiled"]) for uid, o in outcomes.items()} == {
        uids[0]: ("success", 23, 23, address),
        uids[1]: ("success", 5, 5, bundler.noted("tiled")[uids[1]]),
    }
    assert httpx.get(address, headers={"Authorization": f"Apikey {tiled_server.api_key}"}).status_code == 200
    # Found by experiment, job id, time range and any metadata.
    assert list(client.search(Key("start.experiment") == "ramsey")) == [uids[1]]
    assert list(client.search(Key("start.job_id") == "job-1")) == [uids[0]]
    recent = client.search(Key("start.time") >= before).search(Key("start.time") <= time.time())
    assert set(recent) == set(uids)
    assert list(client.search(Key("start.time") < before - 3600)) == []
    assert list(client.search(Key("start.parameters.detection.threshold.value") == 5)) == uids

    run = client[uids[0]]
    assert {"primary", BUNDLED, "baseline", "analysis", "sequences"} <= set(run)
    bundled = run[BUNDLED].read()
    assert bundled["point-index"].values.tolist() == list(range(23))
    assert bundled["sequencer-counts"].shape == (23, 4)
    assert bool(bundled["bundle-complete"].all())
    # The run's HDF5 file is reachable from its entry, with the fits.
    extra = run.metadata["orchestrion"]
    assert extra["analysis"] == FIT
    with h5py.File(extra["hdf5"], "r") as f:
        assert f["entry/run_uid"][()].decode() == uids[0]
        assert f["entry/points"][()] == 23
    assert run.metadata["stop"]["num_events"][BUNDLED] == 23
    # The key opens the catalog; without it the server refuses.
    assert httpx.get(f"{tiled_server.uri}/api/v1/search/").status_code == 401
    client.context.close()
    assert tiled_server.api_key not in capfd.readouterr().err
    for path in bundler.noted("hdf5").values():
        assert tiled_server.api_key.encode() not in Path(path).read_bytes()
    # As the README says: a plain Tiled client, in another process, finds runs by
    # experiment and job id.
    found = subprocess.run(
        [sys.executable, "-c", PLAIN_CLIENT, tiled_server.uri, tiled_server.api_key],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(found.stdout) == {"ramsey": [uids[1]], "job-1": [uids[0]]}


PLAIN_CLIENT = """
import json, sys
from tiled.client import from_uri
from tiled.queries import Key

client = from_uri(sys.argv[1], api_key=sys.argv[2])
print(json.dumps({
    "ramsey": list(client.search(Key("experiment") == "ramsey")),
    "job-1": list(client.search(Key("job_id") == "job-1")),
}))
"""


def test_the_embedded_catalog_persists_under_the_home(tmp_path: Path) -> None:
    config = OrchestrionConfig(home=tmp_path)
    bundler = PostProcessing(config)
    docs = list(whole_run(4, fit=FIT, experiment="rabi_flop"))
    for name, doc in docs:
        bundler(name, doc)
    uid = docs[0][1]["uid"]
    address = bundler.noted("tiled")[uid]
    bundler.close()
    assert address == f"sqlite:///{tmp_path / 'tiled' / 'catalog.db'}#/{uid}"
    # Another connection (as a later process would open it) finds the run and its data.
    again = open_embedded_catalog(tmp_path)
    try:
        (found,) = again.client.search(Key("start.experiment") == "rabi_flop")
        assert found == uid
        run = again.client[uid]
        assert run[BUNDLED].read()["point-index"].values.tolist() == [0, 1, 2, 3]
        assert run.metadata["orchestrion"]["analysis"]["center"] == 1234.5
    finally:
        again.close()


def test_the_pipeline_catalogues_into_the_configured_server(tiled_server: TiledServer, tmp_path: Path) -> None:
    config = OrchestrionConfig(home=tmp_path, tiled_uri=tiled_server.uri, tiled_api_key=tiled_server.api_key)  # type: ignore[arg-type]
    pipeline = build_pipeline(config)
    docs = list(whole_run(6, fit=FIT, experiment="calibrate_frequency", job_id="job-pipeline"))
    uid = docs[0][1]["uid"]
    try:
        for name, doc in docs:
            pipeline(name, doc)
        summary = pipeline.summaries.runs[uid]
        # Written by the post-processing process after the stop: read back once it says so.
        assert pipeline.wait_catalogued(uid, timeout=120)
        client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
        try:
            run = client[uid]
            assert run.metadata["start"]["job_id"] == "job-pipeline"
            assert run.metadata["orchestrion"]["hdf5"] == summary.hdf5
            assert run[BUNDLED].read()["point-index"].values.tolist() == list(range(6))
        finally:
            client.context.close()
    finally:
        pipeline.close()
    assert summary.tiled == f"{tiled_server.uri}/api/v1/metadata/{uid}"
    assert summary.hdf5 is not None
    assert Path(summary.hdf5).parent == (tmp_path / "data").resolve()


_OPEN_CATALOG = """
import sys
from pathlib import Path

from orchestrion.pipeline import open_embedded_catalog

open_embedded_catalog(Path(sys.argv[1])).close()
"""


def test_processes_that_open_a_new_embedded_catalog_together_all_get_it(tmp_path: Path) -> None:
    # A shell and `orchestrion run` started together on a fresh home: each creates the
    # catalog's tables unless they take turns.
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_CATALOG, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(opener.wait(timeout=240), opener.communicate()[1]) for opener in openers]
    assert [code for code, _ in outcomes] == [0, 0, 0], "\n".join(err[-2000:] for _, err in outcomes)


def test_a_run_written_while_the_catalog_was_unreachable_is_catalogued_once_it_is_back(
    tiled_server: TiledServer, tmp_path: Path
) -> None:
    down = OrchestrionConfig(home=tmp_path, tiled_uri=f"http://127.0.0.1:{free_port()}")  # type: ignore[call-arg]
    first = PostProcessing(down)
    docs = list(whole_run(9, fit=FIT, experiment="ramsey", job_id="job-offline"))
    uid = docs[0][1]["uid"]
    for name, doc in docs:
        first(name, doc)
    first.close()
    outcome = first.noted("outcome")[uid]
    # Written to HDF5, not to the catalog: reported so, with where the documents are kept.
    assert (outcome["status"], outcome["points"], outcome["tiled"]) == ("incomplete", 9, None)
    assert outcome["spool"] is not None
    assert Path(outcome["spool"]).exists()
    # The next post-processing that reaches the catalog completes it from the spool.
    up = OrchestrionConfig(home=tmp_path, tiled_uri=tiled_server.uri, tiled_api_key=tiled_server.api_key)  # type: ignore[arg-type]
    PostProcessing(up).close()
    client = from_uri(tiled_server.uri, api_key=tiled_server.api_key)
    try:
        run = client[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run[BUNDLED].read()["point-index"].values.tolist() == list(range(9))
        assert run.metadata["orchestrion"]["hdf5"] == outcome["hdf5"]
        assert run.metadata["orchestrion"]["analysis"] == FIT
        assert list(client.search(Key("job_id") == "job-offline")) == [uid]
    finally:
        client.context.close()
    assert not Path(outcome["spool"]).exists()


class _RequestsSeen:
    """An ASGI app in front of another, noting each HTTP request that reaches it."""

    def __init__(self, app: Any) -> None:
        self.app, self.requests = app, []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


def test_a_run_of_known_length_is_catalogued_while_it_runs_and_its_stop_asks_tiled_no_stream_close(
    tmp_path: Path,
) -> None:
    connection = open_embedded_catalog(tmp_path)
    try:
        in_front = connection.client.context.http_client.app
        assert isinstance(in_front, StreamClosesAnswered)  # the embedded catalog has no live streams
        seen = in_front.app = _RequestsSeen(in_front.app)
        run = fake_run(detunings=20)  # num_points 20: written in batches of 10 while it runs
        writer = RunCatalogWriter(connection, batch_size=500, data_stream="primary")
        for name, doc in run.head():
            writer(name, doc)
        for index in range(20):
            for name, doc in run.point(index):
                writer(name, doc)
        # Every point is in the catalog before the stop: the stop has only the other streams left.
        assert catalog_rows(connection.client[run.uid], "primary") == 20
        for name, doc in run.tail(fit=FIT):
            writer(name, doc)
        assert writer.verify(20).complete
        assert connection.client[run.uid].metadata["stop"]["exit_status"] == "success"
        closes = [path for method, path in seen.requests if path.startswith(StreamClosesAnswered.CLOSE_PREFIX)]
        assert closes == []
    finally:
        connection.close()


def test_a_runs_batch_is_half_of_its_points_unless_they_are_large_or_uncounted() -> None:
    small = {
        "x": {"dtype": "number", "shape": [], "source": "s"},
        "c": {"dtype": "array", "shape": [100], "source": "s"},
    }
    image = {"image": {"dtype": "array", "shape": [1 << 17], "dtype_numpy": "<f8", "source": "s"}}
    frames = {"image": {"dtype": "array", "shape": [1 << 17], "source": "s", "external": "STREAM:"}}
    descriptor = {"data_keys": small}
    assert run_batch_size({"num_points": 31}, descriptor, 500) == 16
    assert run_batch_size({"num_points": 100_000}, descriptor, 500) == 500
    assert run_batch_size({"num_points": 2}, descriptor, 500) == 1
    assert run_batch_size({}, descriptor, 500) == 500  # a run of unknown length: the largest batch
    assert run_batch_size({"num_points": 31}, None, 500) == 500  # no data stream by then
    assert run_batch_size({"num_points": 30}, {"data_keys": image}, 500) == 500  # 1 MiB points
    assert run_batch_size({"num_points": 30}, {"data_keys": frames}, 500) == 15  # frames in their own files
