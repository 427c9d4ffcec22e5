"""Document bus: what publishing costs the RunEngine, how fast workers write, memory bounds.

All against real processes on loopback: a redis-server with its append-only file
written on every change (as `orchestrion up` runs it), a Tiled server with SQL table
storage, and post-processing workers (``python -m orchestrion.bus worker``).

- RunEngine events/s of a 1,000-point ``bp.scan([det], motor, -1, 1, 1000)``
  (ophyd.sim), bare and with `BusPublisher` subscribed (each run timed until its stop
  returned, that is, until all of it is in Redis); alternating, median of the ratios of
  adjacent pairs.  Goal >= 0.95.
- Lag: from a lone 1,000-point run's RunEngine call returning to the worker having
  written it (HDF5 file closed and checked, catalog entry complete and checked).
  Goal < 1 s.
- Runs per minute with one and with two workers: a burst of 200-point runs published
  while the workers are busy, timed until the last is written.
  Also the process's CPU per event, bare and with the bus, and what one document
  costs the RunEngine's thread (replayed).  ``BUS_BENCH_PARTS=throughput``: only this.
- Memory over one long scan (100,000 points by default; ``BUS_BENCH_LONG`` sets it):
  Redis ``used_memory`` and the worker's resident set, sampled while the scan runs and
  after it is written (retention 0: a written run's stream is dropped).

    python -m bench bus          # bench/results/bus.json and .md
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bluesky.plans as bp
import redis
from bluesky import RunEngine
from ophyd.sim import det, motor

from bench._report import Figure, Goal, collector
from orchestrion.bus import DONE, BusKeys, BusPublisher, read_state
from orchestrion.config import OrchestrionConfig, load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.bus_support import RedisServer, TiledServer, bus_env

POINTS = 1000
REPEATS = 5
BURST_RUNS = 8
BURST_POINTS = 200
LONG = int(os.environ.get("BUS_BENCH_LONG", "100000"))
PARTS = os.environ.get("BUS_BENCH_PARTS", "all")  # "throughput": that part alone


def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.005)
    raise TimeoutError(what)


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis = RedisServer(root / "redis")
        self.tiled = TiledServer(root / "tiled")
        self.redis.start()
        self.tiled.start()
        self.home = root / "home"
        self.home.mkdir()
        self.env = bus_env(self.home, self.redis, self.tiled, ORCHESTRION_BUS_RETENTION="0",
                           ORCHESTRION_BUS_CLAIM_IDLE="5.0", ORCHESTRION_BUS_CONNECTORS="[]")  # fmt: skip
        # The configuration is read from the environment; what this bench sets is put back
        # at close, so the benches after it in the same process see the environment they had.
        self._environ_before = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        self.config: OrchestrionConfig = load_config()
        self.client = redis.Redis.from_url(self.redis.url)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started: dict[str, float] = {}  # worker name -> when it was last started

    def start_workers(self, count: int) -> None:
        for n in range(len(self.workers) + 1, count + 1):
            self.started[f"post-processing-{n}"] = time.time()
            log = (self.home / f"worker-{n}.log").open("ab")
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "orchestrion.bus", "worker", "--name", f"post-processing-{n}"],
                env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
            log.close()

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.terminate()
            worker.wait(timeout=60)
        self.workers.clear()

    def ready(self, name: str) -> bool:
        """The named worker's heartbeat says ready, and it was written since the worker was started.

        A stopped worker's last heartbeat stays in Redis until it expires: after a restart
        it would speak for the old, dead process."""
        beat = self.client.get(BusKeys().worker(name))
        if beat is None:
            return False
        heartbeat = json.loads(beat)
        return bool(heartbeat.get("ready")) and float(heartbeat.get("time", 0)) >= self.started.get(name, 0.0)

    def done(self, uid: str) -> bool:
        return read_state(self.client, BusKeys().state(uid)).get("status") == DONE

    def close(self) -> None:
        self.stop_workers()
        self.client.close()
        self.tiled.stop()
        self.redis.stop()
        for name, value in self._environ_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def throughput(bench: Bench) -> dict[str, Any]:
    RE = RunEngine({})
    publisher = BusPublisher(bench.config)
    RE(bp.scan([det], motor, -1, 1, 50))  # warm-up of the RunEngine and the devices

    cpu: dict[bool, list[float]] = {False: [], True: []}

    def timed(with_bus: bool) -> float:
        token = RE.subscribe(publisher) if with_bus else None
        start, start_cpu = time.perf_counter(), time.process_time()
        RE(bp.scan([det], motor, -1, 1, POINTS))
        seconds = time.perf_counter() - start
        # CPU of the whole process (RunEngine and the publisher's feeder thread): less
        # sensitive than wall time to what else runs on the shared machine.
        cpu[with_bus].append((time.process_time() - start_cpu) / POINTS * 1000)
        if token is not None:
            RE.unsubscribe(token)
        return POINTS / seconds

    bare, bus, ratios = [], [], []
    for repeat in range(REPEATS):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        rates = {with_bus: timed(with_bus) for with_bus in order}
        bare.append(rates[False])
        bus.append(rates[True])
        ratios.append(rates[True] / rates[False])
    publisher.close()
    # What one document costs the RunEngine's thread itself: the call only queues it.
    docs: list[tuple[str, dict[str, Any]]] = []
    token = RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bp.scan([det], motor, -1, 1, POINTS))
    RE.unsubscribe(token)
    replay = BusPublisher(bench.config)
    start_thread, start_process = time.thread_time(), time.process_time()
    for name, doc in docs:
        replay(name, doc)
    per_document_ms = (time.thread_time() - start_thread) / len(docs) * 1000
    replay.close()  # returns once everything is in Redis
    # The feeder thread's CPU (encoding, pipelined writes): off the RunEngine's thread,
    # but on the same two cores.
    feeder_ms = ((time.process_time() - start_process) / len(docs) * 1000) - per_document_ms
    return {"bare": bare, "bus": bus, "ratios": ratios,
            "bare_events_per_s": statistics.median(bare), "bus_events_per_s": statistics.median(bus),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_ms_per_event_bare": statistics.median(cpu[False]),
            "cpu_ms_per_event_bus": statistics.median(cpu[True]),
            "cpu_ratio_bare_over_bus": statistics.median(cpu[False]) / statistics.median(cpu[True]),
            "runengine_thread_ms_per_document": per_document_ms,
            "feeder_thread_ms_per_document": feeder_ms}  # fmt: skip


def lag(bench: Bench) -> dict[str, float]:
    RE = RunEngine({}, call_returns_result=True)
    publisher = BusPublisher(bench.config)
    RE.subscribe(publisher)
    warm = RE(bp.scan([det], motor, -1, 1, 10)).run_start_uids[0]
    wait(lambda: bench.done(warm), 300, "the worker to warm up")
    lags = []
    for _ in range(3):
        uid = RE(bp.scan([det], motor, -1, 1, POINTS)).run_start_uids[0]
        returned = time.perf_counter()
        wait(lambda uid=uid: bench.done(uid), 120, "the run to be written")
        lags.append(time.perf_counter() - returned)
    publisher.close()
    return {"lags": lags, "lag_s_median": statistics.median(lags), "lag_s_max": max(lags)}


def runs_per_minute(bench: Bench) -> float:
    RE = RunEngine({}, call_returns_result=True)
    publisher = BusPublisher(bench.config)
    RE.subscribe(publisher)
    start = time.perf_counter()
    uids = [RE(bp.count([det], num=BURST_POINTS)).run_start_uids[0] for _ in range(BURST_RUNS)]
    for uid in uids:
        wait(lambda uid=uid: bench.done(uid), 600, "the burst to be written")
    elapsed = time.perf_counter() - start
    publisher.close()
    return BURST_RUNS / elapsed * 60


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(bench: Bench) -> dict[str, Any]:
    RE = RunEngine({}, call_returns_result=True)
    publisher = BusPublisher(bench.config)
    RE.subscribe(publisher)
    wait(lambda: bench.ready("post-processing-1"), 300, "the worker to warm up")
    beat = bench.client.get(BusKeys().worker("post-processing-1"))
    worker_pid = int(json.loads(beat)["pid"])
    # A first run of the same kind: the worker's imports, caches and catalog client in place.
    warm = RE(bp.count([det], num=1000)).run_start_uids[0]
    wait(lambda: bench.done(warm), 300, "the warm-up run to be written")
    samples: list[tuple[float, float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not stop.wait(2.0):
            used = int(bench.client.info("memory")["used_memory"]) / 2**20
            samples.append((time.monotonic() - start, used, rss_mb(worker_pid)))

    baseline_redis = int(bench.client.info("memory")["used_memory"]) / 2**20
    baseline_worker = rss_mb(worker_pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    uid = RE(bp.count([det], num=LONG)).run_start_uids[0]
    published = time.perf_counter()
    wait(lambda: bench.done(uid), 3600, "the long run to be written")
    written_after = time.perf_counter() - published
    time.sleep(2.5)
    stop.set()
    sampler.join()
    publisher.close()
    after_redis = int(bench.client.info("memory")["used_memory"]) / 2**20
    return {
        "points": LONG, "written_s_after_stop": written_after,
        "redis_mb": {"before": baseline_redis, "peak": max(s[1] for s in samples), "after": after_redis},
        "worker_rss_mb": {"before": baseline_worker, "peak": max(s[2] for s in samples),
                          "after": rss_mb(worker_pid)},
        "samples": [(round(t), round(r, 1), round(w, 1)) for t, r, w in samples[:: max(1, len(samples) // 12)]],
    }  # fmt: skip


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orchestrion-bench-bus-") as directory:
        bench = Bench(Path(directory))
        try:
            results: dict[str, Any] = {"throughput": throughput(bench)}
            print(json.dumps(results, indent=2), file=sys.stderr, flush=True)
            if PARTS == "throughput":
                return results
            bench.start_workers(1)
            results["lag"] = lag(bench)
            print(json.dumps(results["lag"], indent=2), file=sys.stderr, flush=True)
            results["runs_per_minute_1_worker"] = [runs_per_minute(bench) for _ in range(2)]
            bench.start_workers(2)
            wait(lambda: bench.ready("post-processing-2"), 300, "the second worker to warm up")
            results["runs_per_minute_2_workers"] = [runs_per_minute(bench) for _ in range(2)]
            print(json.dumps({k: v for k, v in results.items() if k.startswith("runs")}, indent=2), file=sys.stderr,
                  flush=True)  # fmt: skip
            if PARTS == "no-memory":
                return results
            bench.stop_workers()
            bench.start_workers(1)
            wait(lambda: bench.ready("post-processing-1"), 300, "the restarted worker to warm up")
            results["memory"] = memory(bench)
            print(json.dumps(results["memory"], indent=2), file=sys.stderr, flush=True)
        finally:
            bench.close()
    return results


@collector("bus")
def figures() -> list[Figure]:
    results = measure()
    t = results["throughput"]
    found: list[Figure] = [
        Figure("bus", f"RunEngine events/s with the bus publisher ({POINTS:,}-point bp.scan)", "events/s",
               t["bus"], t["bare"], "bare RunEngine", goal=Goal.ratio_at_least(0.95),
               missed_because=f"wall-clock rates on the shared machine (load average {os.getloadavg()[0]:.0f}: bare "
                              f"itself {min(t['bare']):.0f}-{max(t['bare']):.0f} events/s); the process's CPU per "
                              f"event with the bus was {t['cpu_ms_per_event_bus'] / t['cpu_ms_per_event_bare']:.2f} "
                              "of bare's (next figure).",
               note=f"alternating pairs; median of the pair ratios {t['ratio']:.2f} "
                    f"[{t['ratio_min']:.2f}-{t['ratio_max']:.2f}].", digits=3),
        Figure("bus", "process CPU per event with the bus publisher", "ms", [t["cpu_ms_per_event_bus"]],
               [t["cpu_ms_per_event_bare"]], "bare RunEngine", digits=3,
               note=f"RunEngine thread {t['runengine_thread_ms_per_document'] * 1000:.1f} us per document "
                    f"(it only queues), feeder thread {t['feeder_thread_ms_per_document'] * 1000:.1f} us."),
    ]  # fmt: skip
    if "lag" in results:
        found.append(Figure("bus", f"stop to last point durable in HDF5 and Tiled, {POINTS:,} points", "s",
                            results["lag"]["lags"], goal=Goal.below(1.0, "s"), digits=3,
                            note="until the worker read the file and the catalog entry back and acknowledged.",
                            missed_because="the catalog's writes and read-back on the shared machine."))  # fmt: skip
        one, two = results["runs_per_minute_1_worker"], results["runs_per_minute_2_workers"]
        found.append(Figure("bus", f"runs per minute, {BURST_POINTS}-point runs, one worker", "runs/min", one,
                            digits=3))  # fmt: skip
        found.append(Figure("bus", f"runs per minute, {BURST_POINTS}-point runs, two workers", "runs/min", two,
                            one, "one worker", digits=3, note="2 cores shared by the RunEngine, both workers "
                            "and Tiled."))  # fmt: skip
    if "memory" in results:
        m = results["memory"]
        redis_mb, worker_mb = m["redis_mb"], m["worker_rss_mb"]
        found.append(Figure("bus", f"worker resident memory growth over a {LONG:,}-point scan (peak less before)",
                            "MB", [worker_mb["peak"] - worker_mb["before"]], goal=Goal.below(50.0, "MB"), digits=3,
                            note=f"before {worker_mb['before']:.0f} MB (warmed up), peak {worker_mb['peak']:.0f}, "
                                 f"after {worker_mb['after']:.0f}.",
                            missed_because="per-run state in the worker's chain."))  # fmt: skip
        found.append(Figure("bus", f"Redis used_memory growth over a {LONG:,}-point scan (after written less before)",
                            "MB", [redis_mb["after"] - redis_mb["before"]], goal=Goal.below(5.0, "MB"), digits=3,
                            note=f"peak {redis_mb['peak']:.0f} MB while the run is written (its stream is kept "
                                 "until acknowledged: a worker that dies writes it again from its start).",
                            missed_because="written runs' streams not released."))  # fmt: skip
    return found


if __name__ == "__main__":
    from bench._report import run

    run(["bus"], "bus")
