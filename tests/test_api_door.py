"""The API server as the stack's only door, for real: Tiled's data, device switches, the stack's health.

One stack (Redis, Tiled, post-processing workers, queue server, scheduler, API server,
keeper) on free loopback ports serves the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from orchestrion.cli import cli
from orchestrion.client import AuthError, Client, local_credentials
from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.errors import InputError
from orchestrion.jobs import JobStore
from orchestrion.schema import API_TILED_PREFIX
from orchestrion.services import api_url, run_dir, service, stop_service, tiled_api_key, up

from .support import running_stack, wait_until

SHORT = {"scan": ["spectroscopy.detuning=-1e5:1e5:5"], "shots": 5}

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrchestrionConfig]:
    with running_stack(tmp_path_factory.mktemp("door") / "home") as config:
        yield config


@pytest.fixture(scope="module")
def admin(stack: OrchestrionConfig) -> Iterator[Client]:
    with Client(*local_credentials(stack)) as client:
        yield client


@pytest.fixture(scope="module")
def observer_key(admin: Client) -> str:
    return str(admin.create_key("observer", "lab-pc")["key"])


@pytest.fixture(scope="module")
def user_key(admin: Client) -> str:
    return str(admin.create_key("user", "bob")["key"])


@pytest.fixture(scope="module")
def finished(admin: Client) -> dict[str, Any]:
    """A job done, its run catalogued."""
    job = admin.submit("spectroscopy", **SHORT)
    row = job.wait(120)
    assert row["status"] == "done", row
    job.data(timeout=60)
    # More runs than a page of Tiled's listing holds (below): clients follow `next`.
    for _ in range(2):
        admin.submit("spectroscopy", **SHORT).wait(120)
    return row


def door(config: OrchestrionConfig) -> str:
    return f"{api_url(config)}{API_TILED_PREFIX}"


# -- Tiled's data through the door ----------------------------------------------------------------

READER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from orchestrion.client import Client
    from tiled.client import from_uri

    url, door, key, job_id = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with Client(url, key) as client:
        run = client.job(job_id).data()
        bundled = run["bundled"].read()
        through_client = {"uid": run.metadata["start"]["uid"], "points": int(bundled.sizes[next(iter(bundled.dims))])}
    plain = from_uri(door, api_key=key)
    uids = list(plain)  # every page of the container's keys
    node = plain[through_client["uid"]]
    primary = node["primary"].read()
    print(json.dumps({"client": through_client, "uids": uids, "primary_columns": sorted(primary.data_vars),
                      "primary_points": int(primary.sizes[next(iter(primary.dims))])}))
    """
)


def test_a_client_elsewhere_reads_runs_through_the_door_with_only_its_orchestrion_key(
    stack: OrchestrionConfig, admin: Client, observer_key: str, finished: dict[str, Any], tmp_path: Path
) -> None:
    empty = tmp_path / "lab-pc"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRION_", "TILED_"))}
    env["HOME"] = str(empty)  # nothing of the stack's user: no config, no keys
    result = subprocess.run(
        [sys.executable, "-c", READER_SCRIPT, api_url(stack), door(stack), observer_key, str(finished["id"])],
        cwd=empty, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["client"] == {"uid": finished["run_uid"], "points": 5}
    assert report["primary_points"] == 5
    assert any("bright_fraction" in column for column in report["primary_columns"]), report
    assert finished["run_uid"] in report["uids"]
    assert len(report["uids"]) >= 3
    assert not any(path.is_file() for path in empty.rglob("*")), list(empty.rglob("*"))


def test_the_door_needs_a_key_only_reads_and_its_links_point_at_itself(
    stack: OrchestrionConfig, observer_key: str, finished: dict[str, Any]
) -> None:
    base = door(stack)
    headers = {"Authorization": f"Apikey {observer_key}", "Accept": "application/json"}
    answers: list[httpx.Response] = []

    def get(url: str, **kwargs: Any) -> httpx.Response:
        response = httpx.get(url, headers=headers, timeout=30, **kwargs)
        answers.append(response)
        return response

    # Tiled's `about` answers without a key (the tiled client reads it before sending one),
    # nothing else does.
    assert httpx.get(f"{base}/api/v1/", timeout=30).status_code == 200
    node = f"{base}/api/v1/metadata/{finished['run_uid']}"
    for path in (f"{base}/api/v1/search/", node, f"{base}/api/v1/metadata/"):
        assert httpx.get(path, timeout=30).status_code == 401, path
    assert httpx.get(node, headers={"Authorization": "Apikey 00ff"}, timeout=30).status_code == 401
    # The stack's own Tiled key is no Orchestrion key.
    tiled_key = tiled_api_key(stack)
    assert tiled_key
    refused = httpx.get(node, headers={"Authorization": f"Apikey {tiled_key}"}, timeout=30)
    assert refused.status_code == 401

    about = get(f"{base}/api/v1/")
    assert about.status_code == 200, about.text
    page = get(f"{base}/api/v1/search/", params={"page[limit]": "2"})
    assert page.status_code == 200, page.text
    links = page.json()["links"]
    assert links["self"].startswith(f"{base}/api/v1/"), links
    assert links["next"] is not None, links
    assert links["next"].startswith(f"{base}/api/v1/search/"), links
    following = get(links["next"])
    assert following.status_code == 200
    assert len(following.json()["data"]) == 1  # the third run
    entry = get(f"{base}/api/v1/metadata/{finished['run_uid']}").json()["data"]
    assert entry["id"] == finished["run_uid"]
    for link in entry["links"].values():
        assert link is None or link.startswith(f"{base}/api/v1/"), entry["links"]

    node = f"api/v1/metadata/{finished['run_uid']}"
    for method, path in [("PUT", node), ("DELETE", node), ("POST", "api/v1/metadata/"), ("PATCH", node)]:
        response = httpx.request(method, f"{base}/{path}", headers=headers, json={}, timeout=30)
        answers.append(response)
        assert response.status_code == 405, (method, path, response.text)
        assert "only reads" in response.text
    for path in ("api/v1/%2E%2E/%2E%2E/x", "api/v1/..%2F..%2Fx", "metrics", "api/v2/x"):
        response = httpx.get(f"{base}/{path}", headers=headers, timeout=30)
        assert response.status_code in (404, 422), (path, response.status_code, response.text)
    # A key in the query is not passed on to Tiled (nor set as its cookie).
    queried = get(f"{base}/api/v1/", params={"api_key": tiled_key})
    assert queried.status_code == 200
    assert "tiled_api_key" not in queried.headers.get("set-cookie", "")  # bluesky-httpserver sets its CSRF cookie
    for response in answers:
        assert tiled_key not in response.text, response.url
        assert tiled_key not in json.dumps(dict(response.headers)), response.url
    for log in run_dir(stack).glob("*.log"):
        assert tiled_key not in log.read_text(errors="replace"), log


# -- devices switched through the API -------------------------------------------------------------


def test_a_device_switched_off_through_the_api_refuses_jobs_that_need_it_until_switched_on(
    stack: OrchestrionConfig, admin: Client, user_key: str, observer_key: str
) -> None:
    url = api_url(stack)
    scan = {"scan": ["rf.frequency=199.99e6:200.01e6:3"], "shots": 5}
    store = JobStore.open(stack)
    try:
        with Client(url, observer_key) as observer:
            before = next(d for d in observer.devices() if d["name"] == "rf")
            assert before["enabled"] is True
            jobs_before = [j.id for j in store.list()]
            with pytest.raises(AuthError, match="may not"):
                observer.disable_device("rf")
            assert next(d for d in observer.devices() if d["name"] == "rf")["enabled"] is True
            assert observer.device_history("rf") == []
            assert [j.id for j in store.list()] == jobs_before
        with Client(url, user_key) as bob:
            switched = bob.disable_device("rf", reason="re-cabling the synthesizer")
            assert (switched["enabled"], switched["switch"]["user"]) == (False, "bob")
            assert admin.devices()[[d["name"] for d in admin.devices()].index("rf")]["enabled"] is False
            jobs_before = [j.id for j in store.list()]
            with pytest.raises(InputError, match="rf") as refused:
                bob.submit("spectroscopy", **scan)
            assert "disabled" in str(refused.value)
            assert [j.id for j in store.list()] == jobs_before
            assert bob.enable_device("rf")["enabled"] is True
            row = bob.submit("spectroscopy", **scan).wait(120)
            assert (row["status"], row["points"]) == ("done", 3), row
        history = admin.device_history("rf")
        assert [(h["enabled"], h["user"], h["reason"]) for h in history] == [
            (False, "bob", "re-cabling the synthesizer"),
            (True, "bob", ""),
        ]
        with pytest.raises(InputError, match="no device"):
            admin.disable_device("no_such_device")
    finally:
        store.close()


# -- the stack's health, and who is connected -----------------------------------------------------


def test_the_status_names_every_service_and_the_live_clients_and_shows_a_killed_worker(
    stack: OrchestrionConfig, admin: Client, observer_key: str
) -> None:
    with Client(api_url(stack), observer_key) as observer:
        status = observer.stack_status()
        names = {row["name"]: row for row in status["services"]}
        expected = {"redis", "tiled", "post-processing-1", "post-processing-2", "queue-server", "scheduler", "api",
                    "keeper", "parameter-store"}  # fmt: skip
        assert expected <= set(names), names
        assert all(row["health"] == "ok" for row in names.values()), names
        assert "environment open" in names["queue-server"]["detail"]
        assert status["you"] == {"name": "lab-pc", "role": "observer"}

        stream = observer.live(interval=0.5)
        assert next(stream)[0] == "hello"
        connected = wait_until(
            lambda: [c for c in admin.stack_status()["clients"] if c["name"] == "lab-pc"], timeout=10,
            what="the observer listed as connected",
        )  # fmt: skip
        assert connected[0]["role"] == "observer"
        stream.close()  # type: ignore[attr-defined]
        wait_until(
            lambda: not [c for c in admin.stack_status()["clients"] if c["name"] == "lab-pc"], timeout=30,
            what="the observer gone from the list",
        )  # fmt: skip

    # The keeper would restart the worker at once: stopped first, so the dead worker is seen.
    stop_service(stack, "keeper")
    worker = service("post-processing-2", stack)
    pid = worker.pid(stack)
    assert pid is not None
    try:
        os.kill(pid, signal.SIGKILL)

        def reported() -> dict[str, Any] | None:
            rows = admin.stack_status()["services"]
            return next((r for r in rows if r["name"] == worker.name and r["health"] != "ok"), None)

        dead = wait_until(reported, timeout=30, what="the killed worker reported")
        assert dead["health"] in ("down", "unhealthy"), dead
        others = {r["name"]: r["health"] for r in admin.stack_status()["services"] if r["name"] != "post-processing-2"}
        assert others["post-processing-1"] == "ok", others
        assert others["api"] == "ok", others
    finally:
        up(stack)
    wait_until(
        lambda: all(r["health"] == "ok" for r in admin.stack_status()["services"]), timeout=30, what="all healthy again"
    )


def test_orchestrion_plot_on_a_lab_pc_reads_the_run_through_the_door(
    stack: OrchestrionConfig, observer_key: str, finished: dict[str, Any], tmp_path: Path
) -> None:
    # A lab PC's configuration: another home (nothing of the stack's in it), the URL and a key.
    elsewhere = load_config(home=tmp_path / "lab-pc", api_url=api_url(stack), api_key=SecretStr(observer_key))
    for reference in (finished["run_uid"][:8], str(finished["id"]), "-1"):
        out = tmp_path / f"run-{reference}.png"
        result = CliRunner().invoke(cli, ["plot", reference, "--out", str(out)], obj={"config": elsewhere})
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 10_000, reference
    assert not (tmp_path / "lab-pc").exists()


def test_the_devices_commands_on_a_lab_pc_switch_the_stacks_devices_through_the_door(
    stack: OrchestrionConfig, admin: Client, user_key: str, observer_key: str, tmp_path: Path
) -> None:
    def orchestrion(key: str, *args: str) -> Any:
        elsewhere = load_config(home=tmp_path / "lab-pc", api_url=api_url(stack), api_key=SecretStr(key))
        return CliRunner().invoke(cli, list(args), obj={"config": elsewhere})

    history_before = admin.device_history("rf")
    refused = orchestrion(observer_key, "devices", "disable", "rf")
    assert refused.exit_code != 0
    assert "may not" in refused.output, refused.output
    assert admin.device_history("rf") == history_before
    as_someone_else = orchestrion(user_key, "devices", "disable", "rf", "--user", "alice")
    assert as_someone_else.exit_code != 0
    assert "--user" in as_someone_else.output, as_someone_else.output

    switched = orchestrion(user_key, "devices", "disable", "rf", "--reason", "night shift")
    assert switched.exit_code == 0, switched.output
    assert switched.output.startswith("rf: disabled by bob at ")
    assert "night shift" in switched.output
    listing = orchestrion(observer_key, "devices", "--json")
    assert listing.exit_code == 0, listing.output
    assert next(d for d in json.loads(listing.output) if d["name"] == "rf")["enabled"] is False
    assert orchestrion(user_key, "devices", "enable", "rf").exit_code == 0
    history = orchestrion(observer_key, "devices", "history", "rf", "--json")
    assert [(h["enabled"], h["user"], h["reason"]) for h in json.loads(history.output)][-2:] == [
        (False, "bob", "night shift"),
        (True, "bob", ""),
    ]
    assert admin.devices()[[d["name"] for d in admin.devices()].index("rf")]["enabled"] is True
    assert not (tmp_path / "lab-pc").exists(), "a lab PC's commands write nothing of the stack's locally"
