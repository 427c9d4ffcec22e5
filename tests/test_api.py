"""The API server for real: the whole stack (Redis, queue server, Tiled, scheduler, API server) on free ports.

One stack serves the module; every test leaves the queue empty and the manager idle.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest
from bluesky_queueserver_api import BPlan
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from orchestrion.cli import cli
from orchestrion.client import AuthError, Client, local_credentials
from orchestrion.config import OrchestrionConfig
from orchestrion.jobs import JobStatus, JobStore
from orchestrion.services import api_url, close_api, queue_server_api, run_dir, status, tiled_api_key

from .support import running_stack, wait_until

SHORT = {"scan": ["spectroscopy.detuning=-1e5:1e5:3"], "shots": 5}
LONG = {"scan": ["spectroscopy.detuning=-1e5:1e5:300"], "shots": 20}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrchestrionConfig]:
    with running_stack(tmp_path_factory.mktemp("api") / "home") as config:
        yield config


@pytest.fixture(scope="module")
def admin_key(stack: OrchestrionConfig) -> str:
    return local_credentials(stack)[1]


@pytest.fixture(scope="module")
def admin(stack: OrchestrionConfig, admin_key: str) -> Iterator[Client]:
    with Client(api_url(stack), admin_key) as client:
        yield client


@pytest.fixture(scope="module")
def observer_key(admin: Client) -> str:
    return str(admin.create_key("observer", "lab-pc")["key"])


@pytest.fixture(scope="module")
def user_key(admin: Client) -> str:
    return str(admin.create_key("user", "alice")["key"])


@pytest.fixture
def store(stack: OrchestrionConfig) -> Iterator[JobStore]:
    opened = JobStore.open(stack)
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def settled(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "stack" not in request.fixturenames:
        return
    config = request.getfixturevalue("stack")
    api = queue_server_api(config)
    try:
        if api.status(reload=True)["manager_state"] == "paused":
            api.re_abort()
        wait_until(lambda: api.status(reload=True)["manager_state"] == "idle", timeout=60, what="an idle manager")
        if api.status(reload=True)["items_in_queue"]:
            api.queue_clear()
            # A clear racing the autostart may hold the manager until the scheduler restarts it.
            wait_until(lambda: api.status(reload=True)["manager_state"] == "idle", timeout=60, what="an idle manager")
    finally:
        close_api(api)


@contextlib.contextmanager
def queue_client(config: OrchestrionConfig) -> Iterator[Any]:
    api = queue_server_api(config)
    try:
        yield api
    finally:
        close_api(api)


@contextlib.contextmanager
def held_queue(admin: Client) -> Iterator[None]:
    """A paused long job in front: what is queued meanwhile stays queued."""
    blocker = admin.submit("spectroscopy", **LONG)
    wait_until(lambda: blocker.status == "running", timeout=60, what="the blocker running")
    admin.pause(immediate=True)
    wait_until(lambda: admin.runengine()["manager_state"] == "paused", timeout=30, what="paused")
    # The job table follows within a poll: what is compared against it meanwhile is settled.
    wait_until(lambda: blocker.status == "paused", timeout=10, what="the blocker paused in the table")
    try:
        yield
    finally:
        admin.abort()
        blocker.wait(60)


def listening(ports: set[int]) -> dict[int, set[str]]:
    """Local addresses of the TCP sockets listening on ``ports`` (the kernel's socket table)."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and int(port, 16) in ports:
                found.setdefault(int(port, 16), set()).add(address)
    return found


def stack_listening_sockets(config: OrchestrionConfig) -> set[str]:
    """Every LISTEN socket owned by a process of the stack (found through /proc/PID/fd)."""
    pids = {s.pid for s in status(config) if s.pid}
    for _generation in range(3):  # children and grandchildren: the queue server's worker, tiled under the redactor
        for child in Path("/proc").glob("[0-9]*"):
            try:
                if int((child / "stat").read_text().rsplit(")", 1)[1].split()[1]) in pids:
                    pids.add(int(child.name))
            except (OSError, ValueError, IndexError):
                continue
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                addresses.add(fields[1].split(":")[0])
    return addresses


# -- the service --------------------------------------------------------------------------


def test_the_api_is_a_service_with_an_http_address_and_an_admin_key_0600(stack: OrchestrionConfig) -> None:
    result = CliRunner().invoke(cli, ["status", "--json"], obj={"config": stack})
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["api"]["health"] == "ok"
    assert rows["api"]["address"] == f"http://127.0.0.1:{stack.api_port}"
    key_file = run_dir(stack) / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    openapi = httpx.get(f"{api_url(stack)}/openapi.json", timeout=10).json()
    assert "/api/orchestrion/jobs" in openapi["paths"]
    assert "/api/queue/item/add" in openapi["paths"]  # the queue server's own routes, same server


def test_every_socket_the_stack_listens_on_is_loopback(stack: OrchestrionConfig) -> None:
    addresses = stack_listening_sockets(stack)
    assert addresses, "found the stack's sockets"
    assert addresses == {"0100007F"}, addresses  # 127.0.0.1 only, on every port of every process
    ports = {stack.redis_port, stack.zmq_control_port, stack.zmq_info_port, stack.tiled_port, stack.api_port}
    assert set(listening(ports)) == ports


# -- who may do what ------------------------------------------------------------------------


def test_no_key_is_401_and_an_observer_reads_but_may_not_write(
    stack: OrchestrionConfig, admin: Client, observer_key: str, store: JobStore
) -> None:
    url = api_url(stack)
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/parameters/qubit.frequency"),
                         ("PUT", "/parameters/qubit.frequency"), ("POST", "/runengine/pause")]:  # fmt: skip
        assert httpx.request(method, f"{url}/api/orchestrion{path}", timeout=10).status_code == 401, path
    wrong = httpx.get(f"{url}/api/orchestrion/jobs", headers={"Authorization": "Apikey 00ff"}, timeout=10)
    assert wrong.status_code == 401

    done = admin.submit("spectroscopy", **SHORT).wait(60)
    with queue_client(stack) as queue, held_queue(admin):
        held = admin.submit("spectroscopy", **SHORT)
        before_jobs = [j.to_dict() for j in store.list()]
        before_queue = [i["item_uid"] for i in queue.queue_get(reload=True)["items"]]
        before_value = admin.get("qubit.frequency")
        with Client(url, observer_key) as observer:
            assert observer.whoami()["role"] == "observer"
            assert observer.job_record(done["id"])["status"] == "done"
            assert observer.get("qubit.frequency")["value"] == before_value["value"]
            assert observer.jobs()
            for attempt in (
                lambda: observer.submit("spectroscopy", **SHORT),
                lambda: observer.cancel(held.id),
                lambda: observer.set("qubit.frequency", 1.0e6),
                lambda: observer.pause(),
                lambda: observer.create_key("admin", "mallory"),
            ):
                with pytest.raises(AuthError, match="may not"):
                    attempt()
        assert [j.to_dict() for j in store.list()] == before_jobs
        assert [i["item_uid"] for i in queue.queue_get(reload=True)["items"]] == before_queue
        assert admin.get("qubit.frequency") == before_value
        admin.cancel(held.id)


def test_a_user_submits_and_sets_as_themselves_and_cancels_only_their_own_jobs(
    stack: OrchestrionConfig, admin: Client, user_key: str
) -> None:
    with held_queue(admin):
        theirs = admin.submit("spectroscopy", **SHORT)
        with Client(api_url(stack), user_key) as alice:
            mine = alice.submit("spectroscopy", priority=1, **SHORT)
            assert mine.refresh()["submitter"] == "alice"
            with pytest.raises(AuthError, match="someone else"):
                alice.cancel(theirs.id)
            assert alice.cancel(mine.id)["status"] == "cancelled"
            written = alice.set("qubit.amplitude", 0.45)
            assert written["source"] == "api:alice"
            assert alice.history("qubit.amplitude")[-1]["source"] == "api:alice"
        admin.cancel(theirs.id)


# -- clients through the door ---------------------------------------------------------------


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from orchestrion.client import Client

    url, key = sys.argv[1], sys.argv[2]
    with Client(url, key) as client:
        job = client.submit("spectroscopy", scan=["spectroscopy.detuning=-8e4:8e4:7"], shots=10)
        seen = [row["status"] for row in [job.refresh()]]
        row = job.wait(timeout=120)
        run = job.data()
        table = run["bundled"].read()
        columns = {k: [float(v) for v in table[k].values] for k in table.data_vars if table[k].ndim == 1
                   and table[k].dtype.kind in "fiu"}
        print(json.dumps({"job": row, "columns": columns}))
    """
)


def test_a_client_in_an_empty_directory_with_only_url_and_key_submits_follows_and_reads_its_points(
    stack: OrchestrionConfig, user_key: str, tmp_path: Path
) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRION_", "TILED_"))}
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, api_url(stack), user_key], cwd=empty, env=env,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    job = report["job"]
    assert (job["status"], job["points"], job["points_total"]) == ("done", 7, 7)
    assert list(empty.iterdir()) == []  # it wrote nothing where it ran
    compared = []
    with h5py.File(job["hdf5"], "r") as f:
        for dataset in f["entry/data"].values():
            key = dataset.attrs.get("data_key")
            if key in report["columns"]:
                np.testing.assert_allclose(report["columns"][key], dataset[()], err_msg=key)
                compared.append(key)
    assert any("detuning" in k for k in compared), compared
    assert any("bright_fraction" in k for k in compared), compared


def test_the_cli_goes_through_the_api_and_makes_keys(stack: OrchestrionConfig, admin_key: str) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["api-key", "create", "--role", "observer", "--json"], obj={"config": stack})
    assert made.exit_code == 0, made.output
    key = json.loads(made.output)["key"]
    as_observer = stack.model_copy(update={"api_url": api_url(stack), "api_key": SecretStr(key)})
    listing = runner.invoke(cli, ["jobs", "--json"], obj={"config": as_observer})
    assert listing.exit_code == 0, listing.output
    refused = runner.invoke(cli, ["submit", "ramsey"], obj={"config": as_observer})
    assert refused.exit_code == 2
    assert "may not" in refused.output
    got = runner.invoke(cli, ["params", "get", "qubit.frequency", "--json"], obj={"config": as_observer})
    assert json.loads(got.output)["id"] == "qubit.frequency"
    submitted = runner.invoke(
        cli, ["submit", "ramsey", "--scan", "ramsey.wait=0:1e-5:3", "--shots", "5", "--wait", "--json"],
        obj={"config": stack},
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    assert json.loads(submitted.output)["submitter"] == "admin"


def test_resubmit_records_its_parent_and_a_queued_job_changes_priority(stack: OrchestrionConfig, admin: Client) -> None:
    first = admin.submit("spectroscopy", **SHORT)
    first.wait(60)
    with queue_client(stack) as queue, held_queue(admin):
        again = admin.resubmit(first.id, priority=2)
        row = again.refresh()
        assert (row["parent"], row["priority"], row["arguments"]) == (first.id, 2, first.refresh()["arguments"])
        low = admin.submit("spectroscopy", **SHORT)

        def claim_order() -> list[int]:
            # The order the executor claims queued jobs in (ADR 0310): priority, then submission.
            waiting = admin.jobs(status="queued")
            return [j["id"] for j in sorted(waiting, key=lambda j: (-j["priority"], j["created"], j["id"]))]

        assert claim_order() == [again.id, low.id]
        assert queue.queue_get(reload=True)["items"] == []  # the paused executor takes them
        admin.set_priority(low.id, 5)
        assert low.refresh()["priority"] == 5
        assert claim_order() == [low.id, again.id]
        for job in (again, low):
            admin.cancel(job.id)


def test_pause_resume_abort_and_the_live_stream(stack: OrchestrionConfig, admin: Client) -> None:
    # Long enough to be still running after a pause and a resume (300 points were once
    # done by the abort, found in a full run); aborted, so its length costs nothing.
    job = admin.submit("spectroscopy", **{**LONG, "scan": ["spectroscopy.detuning=-1e5:1e5:5000"]})
    events = []
    for event, data in admin.live(interval=0.1):
        events.append((event, data))
        # The run's first batch may be its start and descriptor alone (no point yet).
        if event == "points" and data["job"] == job.id and data["points"]:
            break
    assert any(e == "job" and d["id"] == job.id and d["status"] == "running" for e, d in events)
    batch = next(d for e, d in events if e == "points" and d["job"] == job.id and d["points"])
    points = batch["points"]
    assert "index" in points[0]
    # Each point carries its per-shot counts (the GUI's shot histograms), named as the
    # file names them, with the data key the file records for that name.
    counts = [name for name, key in batch["keys"].items() if key == "sequencer-counts"]
    assert counts, batch["keys"]
    assert all(len(point[counts[0]]) == LONG["shots"] for point in points)
    assert batch["omitted"] == {}
    admin.pause(immediate=False)
    wait_until(lambda: admin.runengine()["manager_state"] == "paused", timeout=30, what="paused")
    admin.resume()
    wait_until(lambda: admin.runengine()["manager_state"] == "executing_queue", timeout=30, what="running again")
    admin.abort()
    assert job.wait(60)["status"] == "cancelled"


def test_plain_queue_server_items_become_jobs_including_one_added_over_http(
    stack: OrchestrionConfig, user_key: str, store: JobStore
) -> None:
    queue = queue_server_api(stack)
    try:
        plain = queue.item_add(BPlan("rabi_flop", scan=["rabi_flop.duration=0:2e-5:3"], shots=5))["item"]["item_uid"]
    finally:
        close_api(queue)
    script = textwrap.dedent(
        """
        import sys
        from bluesky_queueserver_api import BPlan
        from bluesky_queueserver_api.http import REManagerAPI
        api = REManagerAPI(http_server_uri=sys.argv[1], http_auth_provider=None)
        api.set_authorization_key(api_key=sys.argv[2])
        item = api.item_add(BPlan("ramsey", scan=["ramsey.wait=0:1e-5:3"], shots=5))
        print(item["item"]["item_uid"])
        api.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, api_url(stack), user_key], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    over_http = result.stdout.strip().splitlines()[-1]
    for uid, experiment in ((plain, "rabi_flop"), (over_http, "ramsey")):
        job = wait_until(
            lambda uid=uid: (j := store.by_item_uids([uid]).get(uid)) and j.status.terminal and j,
            timeout=90, what=f"{experiment} adopted and finished",
        )  # fmt: skip
        assert (job.experiment, job.status, job.source) == (experiment, JobStatus.DONE, "queueserver")


# -- bad input ----------------------------------------------------------------------------


def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(
    stack: OrchestrionConfig, admin_key: str, store: JobStore
) -> None:
    url = f"{api_url(stack)}/api/orchestrion"
    headers = {"Authorization": f"Apikey {admin_key}"}
    before = [j.id for j in store.list()]
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/jobs", b"{not json", 400, "body"),
        ("POST", "/jobs", {"experiment": "spectroscopy", "colour": "red"}, 422, "colour"),
        ("POST", "/jobs", {"experiment": "spectroscopy", "shots": "many"}, 422, "shots"),
        ("POST", "/jobs", {"experiment": "nothing"}, 422, "unknown experiment"),
        ("POST", "/jobs", {"experiment": "spectroscopy", "parameters": {"qubit.amplitude": 7}}, 422, "qubit.amplitude"),
        ("POST", "/jobs", {"experiment": "spectroscopy", "parameters": {"no.such": 1}}, 422, "no.such"),
        ("POST", "/jobs", b"[" * 2_000_000, 413, "body"),
        ("PUT", "/parameters/qubit.amplitude", {"value": "loud"}, 422, "qubit.amplitude"),
        ("PUT", "/parameters/qubit.amplitude", {"value": 1, "unit": "V"}, 422, "unit"),
        ("PUT", "/parameters/no.such", {"value": 1}, 404, "no.such"),
        ("GET", "/jobs/1%22%0Aetc", None, 422, "job"),
        ("GET", "/jobs/1%22%0A..%2Fetc", None, 404, "Not Found"),
        ("GET", "/jobs/../../etc/passwd", None, 404, ""),
        ("GET", "/parameters/qubit.frequency?at=yesterday", None, 422, "at"),
        ("POST", "/runengine/pause", {"option": "now"}, 422, "option"),
    ]
    for method, path, body, code, named in cases:
        content = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
        response = httpx.request(method, url + path, content=content, headers=headers, timeout=30)
        assert response.status_code == code, (path, body if not isinstance(body, bytes) else body[:20], response.text)
        assert named in response.text, (path, response.text)
    assert [j.id for j in store.list()] == before


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(["experiment", "scan", "parameters", "shots", "repetitions", "pattern", "priority", "md",
                          "value", "ids", "at", "option", "role", "name"])  # fmt: skip
BODIES = st.dictionaries(FIELDS | st.text(max_size=8), JSONISH, max_size=6) | JSONISH
IDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
WRITES = st.sampled_from(
    [("POST", "/jobs"), ("PUT", "/parameters/{id}"), ("POST", "/parameters/snapshot"), ("POST", "/jobs/{id}/cancel"),
     ("POST", "/jobs/{id}/resubmit"), ("PATCH", "/jobs/{id}"), ("POST", "/runengine/pause"),
     ("POST", "/devices/{id}/enable"), ("POST", "/keys")]
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(write=WRITES, body=BODIES, ident=IDS)
def test_no_write_request_makes_the_server_answer_500(
    stack: OrchestrionConfig, observer_key: str, write: tuple[str, str], body: Any, ident: str
) -> None:
    # An observer key: every write is refused (403) or rejected as malformed first, so
    # the fuzzing reaches validation without filling the queue.
    from urllib.parse import quote

    method, template = write
    path = template.replace("{id}", quote(ident, safe=""))
    response = httpx.request(
        method, f"{api_url(stack)}/api/orchestrion{path}", content=json.dumps(body, allow_nan=True).encode(),
        headers={"Authorization": f"Apikey {observer_key}"}, timeout=30,
    )  # fmt: skip
    assert response.status_code < 500, (method, path, body, response.text)
    # Refused, or redirected unperformed (an id of "/" makes a path with "//"): never done.
    assert not response.is_success, (method, path, body, response.text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, ident=IDS)
def test_no_submission_or_parameter_write_by_an_admin_makes_the_server_answer_500(
    stack: OrchestrionConfig, admin_key: str, body: Any, ident: str
) -> None:
    from urllib.parse import quote

    headers = {"Authorization": f"Apikey {admin_key}"}
    base = f"{api_url(stack)}/api/orchestrion"
    content = json.dumps(body, allow_nan=True).encode()
    for method, path in (("PUT", f"/parameters/{quote(ident, safe='')}"), ("POST", "/parameters/snapshot"),
                         ("PATCH", f"/jobs/{quote(ident, safe='')}")):  # fmt: skip
        response = httpx.request(method, base + path, content=content, headers=headers, timeout=30)
        assert response.status_code < 500, (method, path, body, response.text)


# -- secrets ------------------------------------------------------------------------------


def test_keys_are_in_no_log_job_row_hdf5_file_or_tiled_metadata(
    stack: OrchestrionConfig, admin: Client, admin_key: str, observer_key: str, user_key: str
) -> None:
    admin.submit("spectroscopy", **SHORT).wait(60)
    secrets = {"admin": admin_key, "observer": observer_key, "user": user_key}
    home = stack.home
    for path in home.rglob("*"):
        if path.is_file() and path.name != "api-key":
            text = path.read_bytes()
            for who, key in secrets.items():
                assert key.encode() not in text, (who, path)
    for job in admin.jobs():
        for who, key in secrets.items():
            assert key not in json.dumps(job), (who, job["id"])
    catalog = admin.catalog()
    for uid in list(catalog)[-5:]:
        dumped = json.dumps(dict(catalog[uid].metadata), default=str)
        for who, key in secrets.items():
            assert key not in dumped, (who, uid)
    assert tiled_api_key(stack)
