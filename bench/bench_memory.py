"""Memory over a long scan: resident memory growth through a 100,000-point scan.

``bp.count([det], 100_000)`` of ophyd.sim's ``det`` through the pipeline that
``orchestrion run`` subscribes (run summaries here; bundler, HDF5 and Tiled in the
post-processing process), against the same scan on a bare RunEngine.  Growth = resident
memory (VmRSS) after the scan is written less before it, after a 1,000-point warm-up
run; for the pipeline, this process and the post-processing process together.  Goal:
flat, under 50 MB.

    python -m bench memory
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bluesky.plans as bp
from bluesky import RunEngine
from ophyd.sim import det

from bench._report import Figure, Goal, collector
from orchestrion.config import load_config
from orchestrion.pipeline import build_pipeline

POINTS = 100_000
GOAL_MB = 50.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (the post-processing helper)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _total_mb() -> float:
    me = os.getpid()
    return _rss_mb(me) + sum(_rss_mb(child) for child in _children(me))


def measure(home: Path) -> dict[str, float]:
    RE = RunEngine({})
    RE(bp.count([det], 1000))
    before = _total_mb()
    RE(bp.count([det], POINTS))
    bare = _total_mb() - before
    pipeline = build_pipeline(load_config(home=home))
    token = RE.subscribe(pipeline)
    try:
        RE(bp.count([det], 1000))
        pipeline.wait_catalogued()
        before = _total_mb()
        RE(bp.count([det], POINTS))
        if not pipeline.wait_catalogued():
            raise RuntimeError("the long run was not written (the post-processing process's log above says why)")
        ours = _total_mb() - before
    finally:
        RE.unsubscribe(token)
        pipeline.close()
    return {"bare": bare, "ours": ours}


@collector("memory")
def figures() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        growth = measure(Path(tmp) / "home")
    return [
        Figure("memory", f"memory growth over a {POINTS:,}-point scan (RunEngine + post-processing processes)",
               "MB", [growth["ours"]], [growth["bare"]], "bare RunEngine", goal=Goal.below(GOAL_MB, "MB"),
               digits=3, note="one scan each (it takes minutes); resident memory after the scan is written.",
               missed_because="some stage keeps per-point state for the whole run."),
    ]  # fmt: skip


if __name__ == "__main__":
    from bench._report import run

    run(["memory"], "memory")
