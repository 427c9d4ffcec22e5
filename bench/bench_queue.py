"""Queue latency: Orchestrion's submission path against the bare queue server.

Starts a stack (Redis, queue server, Tiled, scheduler) on free loopback ports in a
temporary home, then measures, for a trivial one-point experiment:

- submission-to-start: from the submitting call to the run's start document (the
  RunEngine opening the run), one job at a time;
- the gap between consecutive short jobs: from one run's stop document to the next
  run's start document, with a batch queued at once.

The document times come from the stack's Tiled catalog; the queue server's own
`time_start`/`time_stop` would hide the manager's polling of the worker.

Bare: bluesky-queueserver-api `item_add` + `queue_start` (the scheduler stopped).
Orchestrion: `Client.submit` (validation, job row, priority placement), autostart and the
scheduler following.  Medians of repeats, ratios against the bare figures.
"""

from __future__ import annotations

import itertools
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRIVIAL = {"scan": ["spectroscopy.detuning=0:0:1"], "shots": 1}
REPEATS = 5
BATCH = 8
ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _history_item(api: Any, uid: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in reversed(api.history_get(reload=True)["items"]):
            if item["item_uid"] == uid:
                return dict(item)
        time.sleep(0.01)
    raise TimeoutError(f"item {uid} did not finish in {timeout} s")


def _run_times(catalog: Any, item: dict[str, Any]) -> tuple[float, float]:
    """(start, stop) document times of the item's run."""
    run_uid = item["result"]["run_uids"][-1]
    deadline = time.monotonic() + 30
    while True:
        try:
            metadata = catalog[run_uid].metadata
            if metadata.get("stop"):
                return float(metadata["start"]["time"]), float(metadata["stop"]["time"])
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_uid} is not in the catalog")
        time.sleep(0.05)


def _measure(submit: Callable[[], str], api: Any, catalog: Any, start_queue: bool) -> tuple[list[float], list[float]]:
    latencies = []
    for _ in range(REPEATS):
        t0 = time.time()
        uid = submit()
        if start_queue:
            api.queue_start()
        start, _ = _run_times(catalog, _history_item(api, uid))
        latencies.append(start - t0)
    uids = [submit() for _ in range(BATCH)]
    if start_queue:
        api.queue_start()
    runs = [_run_times(catalog, _history_item(api, uid)) for uid in uids]
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
    return latencies, gaps


def main() -> None:
    from bluesky_queueserver_api import BPlan

    from orchestrion.client import Client
    from orchestrion.config import load_config
    from orchestrion.services import close_api, down, queue_server_api, stop_service, up

    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(sorted({_free_port() for _ in range(8)}))
        config = load_config(
            home=Path(tmp) / "home", sim_time_scale=0.02, sim_seed=1,
            redis_port=next(ports), zmq_control_port=next(ports), zmq_info_port=next(ports),
            tiled_port=next(ports), scheduler_poll_interval=0.02,
        )  # fmt: skip
        t0 = time.monotonic()
        up(config)
        print(f"stack up in {time.monotonic() - t0:.1f} s")
        api = queue_server_api(config)
        client = Client(config)
        try:
            client.submit("spectroscopy", **TRIVIAL).wait(60)  # warm up the worker and the client

            submit_times: list[float] = []

            def bare_submit() -> str:
                return str(api.item_add(BPlan("spectroscopy", **TRIVIAL))["item"]["item_uid"])

            def orchestrion_submit() -> str:
                t = time.perf_counter()
                uid = client.submit("spectroscopy", **TRIVIAL).record.item_uid
                submit_times.append(time.perf_counter() - t)
                assert uid is not None
                return uid

            bare_latency: list[float] = []
            bare_gap: list[float] = []
            orch_latency: list[float] = []
            orch_gap: list[float] = []
            # Interleaved rounds: both see the same machine, catalog size and history length.
            for _ in range(ROUNDS):
                stop_service(config, "scheduler")
                api.queue_autostart(False)
                latency, gap = _measure(bare_submit, api, client.catalog(), start_queue=True)
                bare_latency += latency
                bare_gap += gap
                up(config)  # the scheduler again; it turns autostart back on
                latency, gap = _measure(orchestrion_submit, api, client.catalog(), start_queue=False)
                orch_latency += latency
                orch_gap += gap
        finally:
            client.close()
            close_api(api)
            down(config, force=True)

    rows = [
        ("submission-to-start", statistics.median(bare_latency), statistics.median(orch_latency)),
        ("gap between jobs", statistics.median(bare_gap), statistics.median(orch_gap)),
    ]
    print(f"{'median over repeats':24} {'bare (s)':>10} {'orchestrion (s)':>16} {'ratio':>7}")
    for name, bare, ours in rows:
        print(f"{name:24} {bare:10.3f} {ours:16.3f} {ours / bare:7.2f}")
    print(f"{'Client.submit call':24} {'':10} {statistics.median(submit_times):16.3f}")
    print(f"gaps, bare:        {_spread(bare_gap)}")
    print(f"gaps, orchestrion: {_spread(orch_gap)}")
    print(
        f"({ROUNDS} interleaved rounds of {REPEATS} single jobs and a batch of {BATCH}; "
        "trivial one-point spectroscopy, 1 shot)"
    )


def _spread(values: list[float]) -> str:
    quartiles = statistics.quantiles(values, n=4)
    q1, median, q3 = quartiles
    return f"min {min(values):.3f}  q1 {q1:.3f}  median {median:.3f}  q3 {q3:.3f}  max {max(values):.3f}"


if __name__ == "__main__":
    main()
