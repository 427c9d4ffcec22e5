"""One benchmark report: figures from every bench module, against baselines measured in the same run.

A bench module plugs in by registering a collector, a function that measures and
returns `Figure`s:

    from bench._report import Figure, Goal, collector

    @collector("bus")
    def figures() -> list[Figure]:
        ours, bare = measure()
        return [Figure("bus", "events/s through the bus", "events/s", ours, bare, "bare Redis XADD",
                       goal=Goal.ratio_at_least(0.95))]

`python -m bench` runs every collector of every ``bench/bench_*.py`` and writes
``bench/results/latest.json`` and ``latest.md`` (the table the README's is made from,
`bench.readme`); ``python -m bench NAME...`` runs only those and writes
``bench/results/NAME.json`` and ``.md``.  Each figure keeps its repeats; the report
gives median and spread, the baseline's, their ratio, and whether the goal is met and,
when not, why (the collector says why in ``missed_because``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

RESULTS = Path(__file__).parent / "results"
LIBRARIES = (
    "bluesky", "ophyd-async", "ophyd", "event-model", "tiled", "bluesky-tiled-plugins", "h5py",
    "bluesky-queueserver", "bluesky-queueserver-api", "numpy", "pydantic", "redis",
)  # fmt: skip


@dataclass(frozen=True)
class Goal:
    """What a figure should reach: on its own value, or on its ratio to the baseline."""

    on: Literal["value", "ratio"]
    op: Literal[">=", "<=", "<", ">"]
    target: float
    unit: str = ""

    @classmethod
    def ratio_at_least(cls, target: float) -> Goal:
        return cls("ratio", ">=", target)

    @classmethod
    def ratio_at_most(cls, target: float) -> Goal:
        return cls("ratio", "<=", target)

    @classmethod
    def below(cls, target: float, unit: str = "") -> Goal:
        return cls("value", "<", target, unit)

    @classmethod
    def at_least(cls, target: float, unit: str = "") -> Goal:
        return cls("value", ">=", target, unit)

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        subject = value if self.on == "value" else ratio
        if subject is None:
            return None
        return {">=": subject >= self.target, "<=": subject <= self.target,
                "<": subject < self.target, ">": subject > self.target}[self.op]  # fmt: skip

    def text(self) -> str:
        subject = "" if self.on == "value" else "ratio "
        return f"{subject}{self.op} {self.target:g}{' ' + self.unit if self.unit else ''}"


@dataclass
class Figure:
    """One measured figure: this project's repeats, and the baseline's from the same run."""

    group: str
    name: str
    unit: str
    ours: Sequence[float]
    baseline: Sequence[float] | None = None
    baseline_name: str = ""
    goal: Goal | None = None
    missed_because: str = ""
    """Why the goal is missed, when it is (the collector knows what stands in the way)."""
    note: str = ""
    digits: int = 3

    def summary(self) -> dict[str, Any]:
        ours = _spread(self.ours)
        base = _spread(self.baseline) if self.baseline else None
        ratio = ours["median"] / base["median"] if base and base["median"] else None
        met = self.goal.met(ours["median"], ratio) if self.goal else None
        return {
            "group": self.group,
            "name": self.name,
            "unit": self.unit,
            "ours": ours,
            "baseline": base,
            "baseline_name": self.baseline_name,
            "ratio": ratio,
            "goal": asdict(self.goal) | {"text": self.goal.text()} if self.goal else None,
            "goal_met": met,
            "missed_because": self.missed_because if met is False else "",
            "note": self.note,
            "digits": self.digits,
        }


def _spread(values: Sequence[float]) -> dict[str, Any]:
    data = [float(v) for v in values]
    quartiles = statistics.quantiles(data, n=4) if len(data) >= 2 else [data[0]] * 3
    return {"median": statistics.median(data), "q1": quartiles[0], "q3": quartiles[2],
            "min": min(data), "max": max(data), "n": len(data), "repeats": data}  # fmt: skip


Collector = Callable[[], list[Figure]]
_COLLECTORS: dict[str, Collector] = {}


def collector(name: str) -> Callable[[Collector], Collector]:
    """Register ``function`` as the collector of the bench group ``name``."""

    def register(function: Collector) -> Collector:
        _COLLECTORS[name] = function
        return function

    return register


def collectors() -> dict[str, Collector]:
    return dict(_COLLECTORS)


def machine() -> dict[str, Any]:
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            continue
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load,
        "libraries": libraries,
        "commit": _commit(),
    }


def _commit() -> str:
    """HEAD's short hash, and whether the code measured differs from it: a figure stamped
    with a commit that did not hold the code measured is a claim nobody can check."""
    where = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=where).stdout.strip()  # fmt: skip
        # What the bench rewrites itself (its results, the README's table) is not the code.
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", ":/src", ":/bench", ":/plans", ":/devices", ":/pyproject.toml",
             ":(exclude,top)bench/results"],
            capture_output=True, text=True, check=True, cwd=where,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} with uncommitted changes" if changed else head


def run(names: Sequence[str], stem: str) -> dict[str, Any]:
    """Run the named collectors (all when empty); write RESULTS/stem.json and .md; return the report."""
    skipped = [n for n in os.environ.get("BENCH_SKIP", "").split(",") if n]
    chosen = {n: c for n, c in _COLLECTORS.items() if (not names or n in names) and n not in skipped}
    unknown = set(names) - set(_COLLECTORS)
    if unknown:
        raise SystemExit(f"unknown bench group(s): {', '.join(sorted(unknown))} (known: {', '.join(_COLLECTORS)})")
    started = time.time()
    report: dict[str, Any] = {"machine": machine() | {"load_average_before": _load()}, "started": started}
    figures: list[dict[str, Any]] = []
    durations: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name, collect in chosen.items():
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            measured = collect()
        except Exception as exc:  # one broken bench must not cost the others' figures
            failures[name] = f"{type(exc).__name__}: {exc}"
            print(f"   FAILED: {failures[name]}", file=sys.stderr, flush=True)
            measured = []
        for figure in measured:
            figures.append(figure.summary())
            print("   " + _line(figures[-1]), file=sys.stderr, flush=True)
        durations[name] = time.monotonic() - t0
        # Written after every group: a run cut short keeps what it measured.
        report["figures"] = figures
        report["failures"] = failures | {n: "skipped (BENCH_SKIP)" for n in skipped if n in _COLLECTORS}
        report["seconds"] = durations | {"total": time.time() - started}
        report["machine"]["load_average_after"] = _load()
        _write(report, stem)
    return report


def _write(report: dict[str, Any], stem: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(report))


def merge(group: str, into: str = "latest") -> None:
    """Put the figures of a separate run of ``group`` (RESULTS/group.json) into RESULTS/into.json."""
    target = json.loads((RESULTS / f"{into}.json").read_text())
    source = json.loads((RESULTS / f"{group}.json").read_text())
    # A collector may file figures under more than its own group (pipeline's HDF5 bandwidth).
    replaced = {group} | {f["group"] for f in source["figures"]}
    target["figures"] = [f for f in target["figures"] if f["group"] not in replaced] + source["figures"]
    target.setdefault("failures", {}).pop(group, None)
    target.setdefault("merged", {})[group] = {"started": source["started"], "machine": source["machine"]}
    (RESULTS / f"{into}.json").write_text(json.dumps(target, indent=2) + "\n")
    (RESULTS / f"{into}.md").write_text(markdown(target))


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return ""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    return f"{value:.2e}"


def _line(f: dict[str, Any]) -> str:
    d = f["digits"]
    base = f" | {f['baseline_name']} {_number(f['baseline']['median'], d)}" if f["baseline"] else ""
    ratio = f" | ratio {f['ratio']:.2f}" if f["ratio"] is not None else ""
    goal = "" if f["goal_met"] is None else (" | goal met" if f["goal_met"] else " | GOAL MISSED")
    return f"{f['name']}: {_number(f['ours']['median'], d)} {f['unit']}{base}{ratio}{goal}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table, with the machine it ran on."""
    m = report["machine"]
    libraries = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report["started"]))
    lines = [
        f"Measured {when} at commit {m['commit']} by `python -m bench` ({report['seconds']['total'] / 60:.1f} min): "
        f"{m['cores']} cores, Python {m['python']}, load average {m['load_average_before'][:1]} before and "
        f"{m['load_average_after'][:1]} after (1 min; the machine is shared); {libraries}.",
        "Median of the repeats [min-max]; the baseline measured in the same run, next to ours; "
        "ratio = ours / baseline.",
        "",
        "| figure | Orchestrion | baseline | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for f in report["figures"]:
        d = f["digits"]
        ours = f["ours"]
        cell = f"{_number(ours['median'], d)} {f['unit']} [{_number(ours['min'], d)}-{_number(ours['max'], d)}]"
        base = ""
        if f["baseline"]:
            b = f["baseline"]
            base = f"{f['baseline_name']}: {_number(b['median'], d)} [{_number(b['min'], d)}-{_number(b['max'], d)}]"
        elif f["baseline_name"]:
            base = f["baseline_name"]
        ratio = f"{f['ratio']:.2f}" if f["ratio"] is not None else ""
        goal = ""
        if f["goal"]:
            verdict = {True: "met", False: "**missed**", None: "?"}[f["goal_met"]]
            goal = f"{f['goal']['text']}: {verdict}"
        mark = ""
        text = " ".join(t for t in (f["missed_because"], f["note"]) if t)
        if text:
            notes.append(text)
            mark = f" ({len(notes)})"
        lines.append(f"| {f['name']}{mark} | {cell} | {base} | {ratio} | {goal} |")
    if notes:
        lines.append("")
        lines.extend(f"({number}) {text}" for number, text in enumerate(notes, 1))
    for name, info in report.get("merged", {}).items():
        when = time.strftime("%H:%M UTC", time.gmtime(info["started"]))
        lines.append("")
        lines.append(f"`{name}` was measured in a separate run at {when} (load average "
                     f"{info['machine']['load_average_before'][:1]}) and merged in.")  # fmt: skip
    for name, error in report.get("failures", {}).items():
        lines.append("")
        lines.append(f"Not measured in this run: `{name}` ({error}).")
    return "\n".join(lines) + "\n"


__all__ = ["RESULTS", "Figure", "Goal", "collector", "collectors", "machine", "markdown", "merge", "run"]


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) of a running process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
