"""Queue latency: Orchestrion's submission path against the bare queue server.

Starts a stack (Redis, queue server, Tiled, scheduler) on free loopback ports in a
temporary home, then measures, for a trivial one-point experiment:

- submission-to-start: from the submitting call to the run's start document (the
  RunEngine opening the run), one job at a time;
- the gap between consecutive short jobs: from one run's stop document to the next
  run's start document, with a batch queued at once;
- the job-to-job gap the hardware sees: from the last point (primary event) of one
  job's run to the first point of the next, over `GAP_JOBS` trivial jobs queued behind
  a longer one while it runs, read from the documents on the stack's bus.

The document times come from the stack's Tiled catalog; the queue server's own
`time_start`/`time_stop` would hide the manager's polling of the worker.

Bare: bluesky-queueserver-api `item_add` + `queue_start` (the scheduler stopped).
Orchestrion: `Client.submit` over HTTP to the API server (validation, job row, priority
placement there), autostart and the scheduler following.

Fairness on a small shared machine, where other work comes and goes in phases of
seconds: single jobs are measured in pairs, one bare and one Orchestrion a few seconds
apart, in the order bare, ours, ours, bare, bare, ... (so each switch of the scheduler
serves two pairs and neither side always goes first); each submission waits until the
previous job has settled (manager idle, job table up to date, a short quiet pause), so
it does not race the previous job's bookkeeping.  Reported: medians, their ratio, and
the median of the paired differences, which the machine's load phases disturb least.
"""

from __future__ import annotations

import itertools
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._report import Figure, Goal, collector

TRIVIAL = {"scan": ["spectroscopy.detuning=0:0:1"], "shots": 1}
PAIRS = 12  # single jobs: this many bare and as many Orchestrion
BATCH = 5  # jobs queued at once for the gaps
BATCH_ROUNDS = 2  # batches each, alternating
SETTLE = 0.2  # s of quiet before each submission
GAP_JOBS = 20  # trivial jobs queued at once behind a longer one, for the job-to-job gap
BLOCKER = {"scan": ["spectroscopy.detuning=-1e5:1e5:60"], "shots": 20}  # runs while they are queued
# For the gap with and without the next job prepared ahead (ADR 0313): a few points with
# some hardware time each, which the preparation of the next job overlaps (a one-point
# job has none: its successor is prepared at its claim either way).
SMALL = {"scan": ["spectroscopy.detuning=-1e5:1e5:4"], "shots": 500}


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


def _run_times(catalog: Any, run_uid: str) -> tuple[float, float]:
    """(start, stop) document times of a run, from the catalog."""
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


class _Side:
    """One way of submitting (bare or Orchestrion) and how to put the stack in its mode."""

    def __init__(
        self,
        submit: Callable[[], str],
        run_of: Callable[[str], str],
        enter: Callable[[], None],
        settled: Callable[[], bool],
        *,
        start_queue: bool,
    ) -> None:
        self.submit = submit
        self.run_of = run_of  # the run uid of what `submit` returned, once it has run
        self.enter = enter
        self.settled = settled
        self.start_queue = start_queue
        self.latencies: list[float] = []
        self.gaps: list[float] = []


def _settle(api: Any, side: _Side, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (api.status(reload=True)["manager_state"] == "idle" and side.settled()):
        if time.monotonic() > deadline:
            raise TimeoutError("the stack did not settle")
        time.sleep(0.02)
    time.sleep(SETTLE)


def _single(api: Any, catalog: Any, side: _Side) -> float:
    _settle(api, side)
    t0 = time.time()
    uid = side.submit()
    if side.start_queue:
        api.queue_start()
    start, _ = _run_times(catalog, side.run_of(uid))
    return start - t0


def _batch(api: Any, catalog: Any, side: _Side) -> list[float]:
    _settle(api, side)
    uids = [side.submit() for _ in range(BATCH)]
    if side.start_queue:
        api.queue_start()
    runs = [_run_times(catalog, side.run_of(uid)) for uid in uids]
    return [b[0] - a[1] for a, b in itertools.pairwise(runs)]


class _PointTimes(threading.Thread):
    """Follows the stack's bus: per run that starts after ``since``, its first and last point times."""

    def __init__(self, config: Any, since: float, count: int) -> None:
        super().__init__(daemon=True)
        from orchestrion.bus import Follower

        self.follower = Follower(config)
        self.since, self.count = since, count
        self.runs: list[tuple[float, float]] = []  # (first point, last point), in start order
        self.done = threading.Event()

    def run(self) -> None:
        from orchestrion.bus import RunNotOnBus

        try:
            for run_uid in self.follower.runs(since_start=True, timeout=300):
                try:
                    times = self._points(run_uid)
                except RunNotOnBus:  # an older run, gone from the bus
                    continue
                if times is not None:
                    self.runs.append(times)
                if len(self.runs) >= self.count:
                    return
        finally:
            self.follower.close()
            self.done.set()

    def _points(self, run_uid: str) -> tuple[float, float] | None:
        primary: set[str] = set()
        times: list[float] = []
        started = 0.0
        for name, doc in self.follower.documents(run_uid, timeout=120):
            if name == "start":
                started = float(doc["time"])
            elif name == "descriptor" and doc.get("name") == "primary":
                primary.add(doc["uid"])
            elif name == "event" and doc["descriptor"] in primary:
                times.append(float(doc["time"]))
            elif name == "event_page" and doc["descriptor"] in primary:
                times.extend(float(t) for t in doc["time"])
        if started < self.since or not times:
            return None
        return min(times), max(times)

    def gaps(self, timeout: float = 300.0) -> list[float]:
        if not self.done.wait(timeout):
            raise TimeoutError("the runs did not all reach the bus")
        return [b[0] - a[1] for a, b in itertools.pairwise(self.runs)]


def _job_to_job_bare(config: Any, api: Any) -> list[float]:
    """Bare: plain items of the same plans, the scheduler stopped, the queue started once."""
    from bluesky_queueserver_api import BPlan

    from orchestrion.services import stop_service

    stop_service(config, "scheduler")
    api.queue_autostart(False)
    follower = _PointTimes(config, time.time(), GAP_JOBS + 1)
    follower.start()
    uids = [str(api.item_add(BPlan("spectroscopy", **BLOCKER))["item"]["item_uid"])]
    uids += [str(api.item_add(BPlan("spectroscopy", **TRIVIAL))["item"]["item_uid"]) for _ in range(GAP_JOBS)]
    api.queue_start()
    for uid in uids:
        _history_item(api, uid, timeout=300)
    return follower.gaps()


def _job_to_job_orchestrion(config: Any, client: Any, job: dict[str, Any] = TRIVIAL) -> list[float]:
    """Orchestrion: jobs submitted over the API server while a longer job runs (scheduler following)."""
    from orchestrion.services import up

    up(config)
    follower = _PointTimes(config, time.time(), GAP_JOBS + 1)
    follower.start()
    blocker = client.submit("spectroscopy", **BLOCKER)
    deadline = time.monotonic() + 60
    while blocker.refresh()["status"] != "running":
        if time.monotonic() > deadline:
            raise TimeoutError("the first job did not start")
        time.sleep(0.02)
    jobs = [client.submit("spectroscopy", **job) for _ in range(GAP_JOBS)]
    for job in [blocker, *jobs]:
        job.wait(300)
    return follower.gaps()


def measure() -> dict[str, Any]:
    """Every figure of the queue bench, from one stack; the repeats of each, bare and ours."""
    from bluesky_queueserver_api import BPlan

    from orchestrion.client import Client
    from orchestrion.config import load_config
    from orchestrion.jobs import ACTIVE, JobStore
    from orchestrion.services import close_api, down, queue_server_api, stop_service, up

    with tempfile.TemporaryDirectory() as tmp:
        ports = iter(sorted({_free_port() for _ in range(8)}))
        config = load_config(
            home=Path(tmp) / "home", sim_time_scale=0.02, sim_seed=1,
            redis_port=next(ports), zmq_control_port=next(ports), zmq_info_port=next(ports),
            tiled_port=next(ports), api_port=next(ports), scheduler_poll_interval=0.02,
        )  # fmt: skip
        t0 = time.monotonic()
        up(config)
        print(f"stack up in {time.monotonic() - t0:.1f} s")
        api = queue_server_api(config)
        client = Client.local(config)  # through the API server, as every client now
        store = JobStore.open(config)
        try:
            client.submit("spectroscopy", **TRIVIAL).wait(60)  # warm up the worker and the client
            catalog = client.catalog()
            submit_times: list[float] = []

            def bare_submit() -> str:
                return str(api.item_add(BPlan("spectroscopy", **TRIVIAL))["item"]["item_uid"])

            def orchestrion_submit() -> str:
                t = time.perf_counter()
                job = client.submit("spectroscopy", **TRIVIAL)
                submit_times.append(time.perf_counter() - t)
                return str(job.id)

            def bare_run(uid: str) -> str:
                return str(_history_item(api, uid)["result"]["run_uids"][-1])

            def orchestrion_run(job_id: str) -> str:
                return str(client.job(int(job_id)).wait(60)["run_uid"])

            def bare_mode() -> None:
                stop_service(config, "scheduler")
                api.queue_autostart(False)

            def table_settled() -> bool:
                return not store.list(list(ACTIVE), limit=1)

            def orchestrion_mode() -> None:
                up(config)  # the scheduler again; it turns autostart back on
                deadline = time.monotonic() + 30
                while not api.status(reload=True)["queue_autostart_enabled"]:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the scheduler did not turn autostart on")
                    time.sleep(0.02)

            bare = _Side(bare_submit, bare_run, bare_mode, lambda: True, start_queue=True)
            ours = _Side(orchestrion_submit, orchestrion_run, orchestrion_mode, table_settled, start_queue=False)
            current: _Side | None = None

            def switch(side: _Side) -> None:
                nonlocal current
                if current is not side:
                    side.enter()
                    current = side

            for number in range(PAIRS):
                for side in (bare, ours) if number % 2 == 0 else (ours, bare):
                    switch(side)
                    side.latencies.append(_single(api, catalog, side))
            for number in range(BATCH_ROUNDS):
                for side in (bare, ours) if number % 2 == 0 else (ours, bare):
                    switch(side)
                    side.gaps.extend(_batch(api, catalog, side))
            bare_points = _job_to_job_bare(config, api)
            our_points = _job_to_job_orchestrion(config, client)
            # Jobs of a few points with the next job's start prepared ahead and made at its
            # claim (ADR 0313), in rounds on, off, off, on: each switch restarts the worker.
            unprepared = config.model_copy(update={"prepare_next_job": False})
            ahead_points: list[float] = []
            claim_points: list[float] = []
            for setting, into, restart in (
                (config, ahead_points, False), (unprepared, claim_points, True),
                (unprepared, claim_points, False), (config, ahead_points, True),
            ):  # fmt: skip
                if restart:
                    stop_service(config, "queue-server")
                    up(setting)
                into.extend(_job_to_job_orchestrion(setting, client, SMALL))
        finally:
            client.close()
            store.close()
            close_api(api)
            down(config, force=True)
    return {
        "bare": bare, "ours": ours, "submit_times": submit_times,
        "bare_points": bare_points, "our_points": our_points,
        "ahead_points": ahead_points, "claim_points": claim_points,
    }  # fmt: skip


@collector("queue")
def figures() -> list[Figure]:
    measured = measure()
    bare, ours = measured["bare"], measured["ours"]
    return [
        Figure("queue", "job-to-job gap, last point to first point", "s", measured["our_points"],
               measured["bare_points"], "bare queue server", goal=Goal.below(0.1, "s"),
               missed_because="the next job's snapshot, first sequence and run open happen after the previous run",
               note=f"{GAP_JOBS} trivial jobs queued behind a 60-point one; times of the documents on the bus"),
        Figure("queue", "job-to-job gap, 4-point jobs, next job prepared ahead", "s", measured["ahead_points"],
               measured["claim_points"], "prepared at its claim",
               note=f"{GAP_JOBS} jobs of 4 points x 500 shots behind a 60-point one, 2 rounds each, "
               "alternating (prepare_next_job on, off, off, on; ADR 0313)"),
        Figure("queue", "gap between jobs, stop to next start", "s", ours.gaps, bare.gaps, "bare queue server",
               note=f"{BATCH_ROUNDS} batches of {BATCH}"),
        Figure("queue", "submission-to-start of a trivial job", "s", ours.latencies, bare.latencies,
               "bare item_add + queue_start", goal=Goal.ratio_at_most(1.1), digits=3,
               missed_because="the submitting call alone takes about as long as the bare path to the run's "
               "start: an authenticated HTTP request to the API server (bluesky-httpserver commits the API key's "
               "last activity to its SQLite database at every request), the queue server's permissions and queue "
               "read (py-spy: 1.7 and 3.7 ms), the job row committed (1.9 ms), the executor item added (4.7 ms); "
               "from the item's addition to the start both paths take about the same; see the printed breakdown"),
    ]  # fmt: skip


def main() -> None:
    measured = measure()
    bare, ours, submit_times = measured["bare"], measured["ours"], measured["submit_times"]
    rows = [
        ("submission-to-start", statistics.median(bare.latencies), statistics.median(ours.latencies)),
        ("gap between jobs", statistics.median(bare.gaps), statistics.median(ours.gaps)),
    ]
    print(f"{'median over repeats':24} {'bare (s)':>10} {'orchestrion (s)':>16} {'ratio':>7}")
    for name, bare_figure, our_figure in rows:
        print(f"{name:24} {bare_figure:10.4f} {our_figure:16.4f} {our_figure / bare_figure:7.2f}")
    print(f"{'Client.submit (HTTP)':24} {'':10} {statistics.median(submit_times):16.4f}")
    differences = [o - b for b, o in zip(bare.latencies, ours.latencies, strict=True)]
    print(f"submission-to-start, Orchestrion - bare, paired: {_spread(differences, 1e3, 'ms')}")
    print(f"submission-to-start, bare:        {_spread(bare.latencies, 1e3, 'ms')}")
    print(f"submission-to-start, Orchestrion: {_spread(ours.latencies, 1e3, 'ms')}")
    print(f"gaps, bare:        {_spread(bare.gaps)}")
    print(f"gaps, Orchestrion: {_spread(ours.gaps)}")
    print(f"last point to first point, bare:        {_spread(measured['bare_points'])}")
    print(f"last point to first point, Orchestrion: {_spread(measured['our_points'])}")
    print(f"last point to first point, prepared ahead: {_spread(measured['ahead_points'])}")
    print(f"last point to first point, prepared at the claim: {_spread(measured['claim_points'])}")
    print(
        f"({PAIRS} pairs of single jobs, {BATCH_ROUNDS} batches of {BATCH} each; "
        "trivial one-point spectroscopy, 1 shot)"
    )


def _spread(values: list[float], scale: float = 1.0, unit: str = "s") -> str:
    q1, median, q3 = (scale * q for q in statistics.quantiles(values, n=4))
    figures = {"min": scale * min(values), "q1": q1, "median": median, "q3": q3, "max": scale * max(values)}
    digits = 1 if unit == "ms" else 3
    return "  ".join(f"{name} {value:.{digits}f}" for name, value in figures.items()) + f" {unit}"


if __name__ == "__main__":
    main()
