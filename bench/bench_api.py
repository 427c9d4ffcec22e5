"""The API server's cost: submission to start through it, against bare bluesky-httpserver, on one stack.

Starts a stack (Redis, queue server, Tiled, scheduler, API server) on free loopback
ports.  Alternating pairs of the same trivial job (a 1-point spectroscopy, 1 shot):

- bare: bluesky-httpserver's own `POST /api/queue/item/add` (the queue server's REST
  route, same server, same key), the scheduler adopting the item as a job;
- Orchestrion: `POST /api/orchestrion/jobs` (validation, job row, placement, item).

Submission to start is from just before the request to the run's start document (its
time, from the stack's Tiled catalog).  Then parameter get and set over the API.
Medians and quartiles; `python -m bench api`.
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

N_PAIRS = 15
N_PARAMETER = 200
PLAN = {"experiment": "spectroscopy", "scan": ["spectroscopy.detuning=0:0:1"], "shots": 1}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spread(values: list[float], scale: float = 1.0, unit: str = "s") -> str:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return f"median {median * scale:.4f} {unit} (q1 {q1 * scale:.4f}, q3 {q3 * scale:.4f}, n={len(values)})"


def _run_start(catalog: Any, run_uid: str, deadline: float) -> float | None:
    """The start time of run ``run_uid`` once the stack's catalog has it (None at ``deadline``)."""
    while time.monotonic() < deadline:
        try:
            return float(catalog[run_uid].metadata["start"]["time"])
        except KeyError:
            time.sleep(0.05)
    return None


def _start_time(catalog: Any, api: Any, uid: str, timeout: float = 60.0) -> float:
    """When the queue-server item ``uid``'s run started (from the item's history entry)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in reversed(api.history_get(reload=True)["items"]):
            if item["item_uid"] == uid and item["result"].get("run_uids"):
                started = _run_start(catalog, item["result"]["run_uids"][-1], deadline)
                if started is not None:
                    return started
        time.sleep(0.02)
    raise TimeoutError(f"item {uid} did not run")


def _job_start_time(http: Any, catalog: Any, job_id: int, timeout: float = 60.0) -> float:
    """When job ``job_id``'s run started (jobs run inside the executor item, ADR 0310: no
    item of their own to look up in the queue server's history)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_uid = http.get(f"/api/orchestrion/jobs/{job_id}").json().get("run_uid")
        if run_uid and (started := _run_start(catalog, run_uid, deadline)) is not None:
            return started
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not run")


def _idle(api: Any) -> None:
    while api.status(reload=True)["manager_state"] != "idle" or api.status(reload=True)["items_in_queue"]:
        time.sleep(0.02)
    time.sleep(0.2)


def main() -> None:
    import httpx

    from orchestrion.config import load_config
    from orchestrion.services import api_url, close_api, down, queue_server_api, run_dir, up

    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(_free_port())
    redis_port, control_port, info_port, tiled_port, api_port = sorted(ports)
    config = load_config(
        home=Path(tempfile.mkdtemp()) / "home", sim_time_scale=0.02, redis_port=redis_port,
        zmq_control_port=control_port, zmq_info_port=info_port, tiled_port=tiled_port, api_port=api_port,
    )  # fmt: skip
    try:
        up(config)
        key = (run_dir(config) / "api-key").read_text().strip()
        http = httpx.Client(base_url=api_url(config), headers={"Authorization": f"Apikey {key}"}, timeout=30)
        api = queue_server_api(config)
        from orchestrion.client import Client

        client = Client(api_url(config), key)
        catalog = client.catalog()

        def bare() -> float:
            item = {"item_type": "plan", "name": PLAN["experiment"],
                    "kwargs": {"scan": PLAN["scan"], "shots": PLAN["shots"]}}  # fmt: skip
            response = http.post("/api/queue/item/add", json={"item": item})
            return _start_time(catalog, api, str(response.json()["item"]["item_uid"]))

        def orchestrion() -> float:
            job = http.post("/api/orchestrion/jobs", json=PLAN).json()
            return _job_start_time(http, catalog, int(job["id"]))

        latencies: dict[str, list[float]] = {"bare": [], "orchestrion": []}
        for _ in range(N_PAIRS):
            for name, submit in (("bare", bare), ("orchestrion", orchestrion)):
                _idle(api)
                t0 = time.time()
                latencies[name].append(submit() - t0)
        for name, values in latencies.items():
            print(f"submission to start, {name:12} {_spread(values)}")
        ratio = statistics.median(latencies["orchestrion"]) / statistics.median(latencies["bare"])
        pairs = [o - b for b, o in zip(latencies["bare"], latencies["orchestrion"], strict=True)]
        print(f"ratio of medians {ratio:.2f} (goal <= 1.2); paired difference {_spread(pairs, 1000, 'ms')}")

        gets, sets = [], []
        for i in range(N_PARAMETER):
            t0 = time.perf_counter()
            client.get("qubit.amplitude")
            gets.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.set("qubit.amplitude", 0.4 + (i % 2) * 0.01)
            sets.append(time.perf_counter() - t0)
        print(f"parameter get over the API  {_spread(gets, 1000, 'ms')}")
        print(f"parameter set over the API  {_spread(sets, 1000, 'ms')}")
        client.close()
        http.close()
        close_api(api)
    finally:
        down(config, force=True)


if __name__ == "__main__":
    main()
