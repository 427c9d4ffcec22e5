"""The fixed cost of a command: whole-process timings of the CLI against ``python -c pass``.

Each repeat runs, one after the other in a fresh temporary home: ``python -c pass`` (the
interpreter's own start, the baseline), the listings (``orchestrion experiments``,
``devices``, ``params list``, ``jobs``), ``orchestrion run spectroscopy`` (31 points,
catalog on, the simulated lab in real time) and ``orchestrion shell`` until IPython shows
its prompt (in a pseudo-terminal).  The commands alternate within each repeat, so the
shared machine's load phases fall on all of them alike; figures are medians.

The fixed cost of ``orchestrion run`` is its wall time less the run's own duration (start
to stop document, from ``--json``): imports, the lab's set-up, the post-processing
process and waiting for the run to be written.

``BENCH_STARTUP_BEFORE=REV`` also times the same commands on the source of git revision
REV (exported to a temporary directory, put first on ``PYTHONPATH``), interleaved with
the current code: the before and after of a change (the report keeps them).
``BENCH_STARTUP_AFTER=REV`` times REV's source in place of the checkout (so the checkout
can change while the bench runs).  ``BENCH_STARTUP_ONLY=shell`` (or ``listings``, ``run``,
comma-separated) times only those commands, besides ``python -c pass``.

    python -m bench startup
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench._report import Figure, Goal, collector, process_cpu

REPEATS = int(os.environ.get("BENCH_STARTUP_REPEATS", "3"))
GROUPS = ("listings", "run", "shell")
ONLY = [group.strip() for group in os.environ.get("BENCH_STARTUP_ONLY", ",".join(GROUPS)).split(",") if group.strip()]
if unknown := sorted(set(ONLY) - set(GROUPS)):
    raise SystemExit(f"BENCH_STARTUP_ONLY: unknown {', '.join(unknown)} (known: {', '.join(GROUPS)})")
ROOT = Path(__file__).resolve().parent.parent
ORCHESTRION = [str(Path(sys.executable).parent / "orchestrion")]
LISTINGS = {
    "experiments": ["experiments"],
    "devices": ["devices"],
    "params list": ["params", "list"],
    "jobs": ["jobs"],
}
LISTING_GOAL = 0.5  # s
RUN_GOAL = 2.0  # s of fixed cost
SHELL_GOAL = 5.0  # s to the prompt
# What stands in the way of a listing's goal when it is missed (ADR 0813).
LISTING_MISSED = {
    "experiments": "the interpreter's imports of what the library's declarations are made of: click, pydantic "
    "and pydantic-settings (the configuration), numpy; no bluesky (tests/test_cli_imports.py).",
    "devices": "connecting the devices for their real state imports ophyd-async, whose package imports bluesky's "
    "(no RunEngine, no ophyd 1.x and no library since ADR 0813).",
    "params list": "the library's declarations (as `experiments`) and the SQLite store; no bluesky.",
    "jobs": "click, pydantic-settings and the job table's module; no bluesky.",
}


class Tree:
    """A source tree to time: the checkout, or a git revision exported beside it."""

    def __init__(self, label: str, root: Path, home: Path) -> None:
        self.label, self.root, self.home = label, root, home
        self.env = os.environ | {"ORCHESTRION_HOME": str(home), "ORCHESTRION_SIM_SEED": "1"}
        self.env.pop("DISPLAY", None)  # no live-plot window: the prompt, not a display check
        if root != ROOT:
            self.env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root)])
        home.mkdir(parents=True, exist_ok=True)

    def seconds(self, command: Sequence[str]) -> float:
        start = time.perf_counter()
        subprocess.run(command, cwd=self.root, env=self.env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    def run_seconds(self, standby: bool = True) -> tuple[float, float, float]:
        """Wall time of ``orchestrion run spectroscopy --json``, the run's own duration, and
        the CPU time (user and system) of the command and its post-processing process.

        With ``standby`` the run adopts the standby post-processing process the previous
        run left (ADR 0814), whose CPU time is not counted (it is not a child); without,
        it starts its own, as the first run of a session does."""
        used = _children_cpu()
        start = time.perf_counter()
        env = self.env if standby else self.env | {"ORCHESTRION_POST_PROCESSING_STANDBY": "0"}
        done = subprocess.run([*ORCHESTRION, "run", "spectroscopy", "--json"], cwd=self.root, env=env,
                              check=True, capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - start
        summary = json.loads(done.stdout)
        if summary["status"] != "success" or not summary["tiled"]:
            raise RuntimeError(f"orchestrion run did not write its run to the catalog: {summary}")
        cpu = _children_cpu() - used
        if standby:
            # The standby this run left imports for seconds: the next command timed would
            # share the cores with it (a user types the next command seconds later).
            _wait_standby_imported(self.home)
        return wall, float(summary["duration"]), cpu

    def shell_seconds(self) -> tuple[float, float, float]:
        """From starting ``orchestrion shell`` to IPython's first prompt, and to the answer
        of ``len(catalog)`` typed at that prompt (the catalog is made behind the prompt);
        and the CPU time of the shell's process (not its helper's) by that answer."""
        import pexpect  # type: ignore[import-untyped]

        start = time.perf_counter()
        child = pexpect.spawn(ORCHESTRION[0], [*ORCHESTRION[1:], "shell", "--simple-prompt", "--no-banner"],
                              cwd=str(self.root), env=self.env, timeout=300, encoding="utf-8")  # fmt: skip
        try:
            child.expect(r"In \[1\]: ")
            prompt = time.perf_counter() - start
            child.sendline("len(catalog)")
            child.expect(r"Out\[1\]: \d+")
            catalog = time.perf_counter() - start
            cpu = process_cpu(child.pid)
            child.sendline("exit")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        return prompt, catalog, cpu


def _wait_standby_imported(home: Path, timeout: float = 120.0) -> None:
    """Until the standby post-processing processes of ``home`` use no more CPU (their
    imports done: each waits, idle, to be adopted)."""
    marker = f"--standby-home\0{home.resolve()}\0".encode()
    deadline = time.monotonic() + timeout
    last: dict[int, float] | None = None
    while time.monotonic() < deadline:
        now: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    now[int(entry.name)] = process_cpu(int(entry.name))
            except (OSError, IndexError):
                continue  # ended meanwhile
        if now == last:  # idle over a sample (or none left: nothing to wait for)
            return
        last = now
        time.sleep(0.5)  # a CPU-time sample: unchanged over half a second is idle
    raise RuntimeError(f"the standby of {home} was still importing after {timeout:.0f} s")


def _children_cpu() -> float:
    """CPU seconds of the waited-for children so far (a waited-for child's own children
    included): on a shared machine far steadier than wall time, which waits for cores."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _export(revision: str, directory: Path) -> Path:
    """The tracked files of ``revision``, as a plain directory."""
    directory.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def measure(trees: Sequence[Tree], repeats: int = REPEATS) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {tree.label: {} for tree in trees}
    baseline: list[float] = []
    for tree in trees:  # warm the file cache and create the stores, untimed
        if "run" in ONLY or "listings" in ONLY:
            tree.run_seconds()
        else:
            tree.shell_seconds()
    for _ in range(repeats):
        baseline.append(trees[0].seconds([sys.executable, "-c", "pass"]))
        for tree in trees:
            figures = times[tree.label]
            if "listings" in ONLY:
                for name, arguments in LISTINGS.items():
                    figures.setdefault(name, []).append(tree.seconds([*ORCHESTRION, *arguments]))
            if "run" in ONLY:
                wall, duration, cpu = tree.run_seconds()
                figures.setdefault("run wall", []).append(wall)
                figures.setdefault("run fixed", []).append(wall - duration)
                figures.setdefault("run cpu", []).append(cpu)
                wall, duration, cpu = tree.run_seconds(standby=False)
                figures.setdefault("run fixed, no standby", []).append(wall - duration)
                figures.setdefault("run cpu, no standby", []).append(cpu)
            if "shell" in ONLY:
                prompt, catalog, cpu = tree.shell_seconds()
                figures.setdefault("shell", []).append(prompt)
                figures.setdefault("shell catalog", []).append(catalog)
                figures.setdefault("shell catalog cpu", []).append(cpu)
    return times | {"python -c pass": {"wall": baseline}}


@collector("startup")
def figures() -> list[Figure]:
    before = os.environ.get("BENCH_STARTUP_BEFORE")
    after = os.environ.get("BENCH_STARTUP_AFTER")
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        current = _export(after, Path(tmp) / "after") if after else ROOT
        trees = [Tree(after or "current", current, Path(tmp) / "home")]
        if before:
            trees.append(Tree(before, _export(before, Path(tmp) / "before"), Path(tmp) / "home-before"))
        times = measure(trees)
        for tree in trees:
            if tree.root != ROOT:
                shutil.rmtree(tree.root, ignore_errors=True)
    bare = times["python -c pass"]["wall"]
    result: list[Figure] = []
    for tree in trees:
        t = times[tree.label]
        suffix = "" if tree is trees[0] else f" (at {tree.label}, before)"
        for name in LISTINGS if "listings" in ONLY else ():
            result.append(Figure(
                "startup", f"`orchestrion {name}`{suffix}", "s", t[name], bare, "python -c pass",
                goal=Goal.below(LISTING_GOAL, "s"), digits=2,
                missed_because=LISTING_MISSED[name],
            ))  # fmt: skip
        if "run" in ONLY:
            result.append(Figure(
                "startup", f"`orchestrion run spectroscopy` fixed cost (wall less the run){suffix}", "s",
                t["run fixed"], bare, "python -c pass", goal=Goal.below(RUN_GOAL, "s"), digits=2,
                missed_because="before the run, bluesky's RunEngine imports ophyd 1.x for its version (0.6-1.1 s), "
                "then bluesky, ophyd-async and the lab's set-up; after its stop, about 31 requests to the embedded "
                "catalog at 25-40 ms each (15 of them TiledWriter closing each node's stream).",
                note=f"adopting the standby the previous run left (ADR 0814); wall time "
                f"{statistics.median(t['run wall']):.2f} s, 31 points.",
            ))  # fmt: skip
            if "run fixed, no standby" in t:
                result.append(Figure(
                    "startup", f"the same, no standby (a session's first run){suffix}", "s", t["run fixed, no standby"],
                    bare, "python -c pass", goal=Goal.below(RUN_GOAL, "s"), digits=2,
                    missed_because="the post-processing process's imports (bluesky-tiled-plugins' xarray and "
                    "dask, Tiled's server and catalog) end after a 31-point run on this shared machine, and its "
                    "catalog write at the stop.",
                ))  # fmt: skip
            result.append(Figure(
                "startup", f"`orchestrion run spectroscopy` CPU time, command and helper{suffix}", "s",
                t.get("run cpu, no standby", t["run cpu"]), bare, "python -c pass", digits=2,
                note="user and system time of both processes (no standby), the run's included: what the wall times "
                "wait for, on a machine whose other load they also wait for.",
            ))  # fmt: skip
            result.append(Figure(
                "startup", f"`orchestrion run spectroscopy` CPU time of the command, adopting a standby{suffix}", "s",
                t["run cpu"], bare, "python -c pass", digits=2,
                note="the standby's imports were done before, in the background, at the post-processing niceness.",
            ))  # fmt: skip
        if "shell" in ONLY:
            result.append(Figure(
                "startup", f"`orchestrion shell` to its prompt{suffix}", "s", t["shell"], bare, "python -c pass",
                goal=Goal.below(SHELL_GOAL, "s"), digits=2,
                missed_because="IPython, the lab (bluesky, ophyd-async, and ophyd 1.x, which the RunEngine imports "
                "for its version) and the parameter store come before the prompt; the catalog and the live table "
                "are made behind it (ADR 0821).",
            ))  # fmt: skip
            result.append(Figure(
                "startup", f"`orchestrion shell` to the answer of `len(catalog)` typed at its prompt{suffix}", "s",
                t["shell catalog"], bare, "python -c pass", digits=2,
                note="the catalog (Tiled's server, catalog and client in the shell's process) is made behind the "
                "prompt: a user who uses it at once waits for it (ADR 0821).",
            ))  # fmt: skip
            result.append(Figure(
                "startup", f"`orchestrion shell` CPU time to that answer, the shell's process{suffix}", "s",
                t["shell catalog cpu"], bare, "python -c pass", digits=2,
                note="user and system time of the shell's process by the answer (its post-processing helper not "
                "counted): the same work, wherever the prompt falls in it.",
            ))  # fmt: skip
    return result


def main() -> None:
    from bench._report import run

    run(["startup"], "startup")


if __name__ == "__main__":
    main()
