"""What a session shows while a scan runs and when it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from event_model import DocumentRouter
from event_model.documents import Event, EventDescriptor, EventPage, RunStart, RunStop
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from orchestrion.analysis import fit_lines
from orchestrion.pipeline import RunSummary, how_to_open
from orchestrion.schema import ANALYSIS, BASELINE, PRIMARY, SEQUENCES

PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TextColumn("{task.fields[rate]}"),
    TimeElapsedColumn(),
    TimeRemainingColumn(),
)


NOT_PLOTTED = [BASELINE, ANALYSIS, SEQUENCES]
"""Streams with no live plot: one point per run (the fit), or sequence hashes and JSON."""

# Opens, draws and closes one figure as the session's matplotlib would, and names the
# interactive framework it used (None for a non-interactive backend such as Agg).
_PROBE = """
import matplotlib.pyplot as plt
figure = plt.figure()
figure.canvas.draw()
framework = type(figure.canvas).required_interactive_framework
plt.close(figure)
print(framework)
"""


@dataclass(frozen=True)
class DisplayCheck:
    """Whether live plots can appear, and why not when a display is set but unusable."""

    framework: str | None = None
    """The GUI toolkit matplotlib's windows use ("qt", "tk", ...); None: no live plots."""
    problem: str | None = None
    """Why a display that is set cannot show a plot (e.g. Qt lacks a system library)."""


def display_is_set() -> bool:
    """Whether the environment names a display for live plots (`check_display` tries it)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def check_display(timeout: float = 30.0) -> DisplayCheck:
    """Whether a live plot has somewhere to appear: try one figure in a child process.

    A set $DISPLAY is not enough: the X server may be gone (matplotlib then falls back
    to Agg), or Qt may miss a system library, and then Qt aborts the whole process at
    the first figure. The child takes that abort, so the session reports it instead.
    """
    if not display_is_set():
        return DisplayCheck()
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return DisplayCheck(problem=f"no figure opened on the display within {timeout:g} s")
    if probe.returncode != 0:
        said = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
        # A Python error ends with its message; Qt's abort starts with its reason.
        reason = said[-1:] if "Traceback" in probe.stderr else said[:2]
        return DisplayCheck(problem=" ".join(reason) or f"a test figure failed (exit status {probe.returncode})")
    lines = probe.stdout.split()
    framework = lines[-1] if lines else "None"
    return DisplayCheck(framework=None if framework == "None" else framework)


class ProgressDisplay(DocumentRouter):
    """A progress bar over each run's points: done, rate and time left."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._primary: set[str] = set()
        self._started = 0.0
        self._done = 0

    def start(self, doc: RunStart) -> RunStart:
        total = doc.get("num_points")
        self._progress = Progress(*PROGRESS_COLUMNS, console=self._console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(
            str(doc.get("experiment", "run")), total=total if isinstance(total, int) else None, rate=""
        )
        self._started = doc["time"]
        self._done = 0
        return doc

    def descriptor(self, doc: EventDescriptor) -> EventDescriptor:
        if doc.get("name") == PRIMARY:
            self._primary.add(doc["uid"])
        return doc

    def _advance(self, count: int, now: float) -> None:
        if self._progress is None or self._task is None:
            return
        self._done += count
        elapsed = now - self._started
        rate = f"{self._done / elapsed:.1f} pt/s" if elapsed > 0 else ""
        self._progress.update(self._task, advance=count, rate=rate)

    def event(self, doc: Event) -> Event:
        if doc["descriptor"] in self._primary:
            self._advance(1, doc["time"])
        return doc

    def event_page(self, doc: EventPage) -> EventPage:
        if doc["descriptor"] in self._primary:
            self._advance(len(doc["seq_num"]), doc["time"][-1])
        return doc

    def stop(self, doc: RunStop) -> RunStop:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        return doc

    def on_state_change(self, new: str, old: str) -> None:
        """RunEngine state hook: hide the bar while paused, so the prompt is clear."""
        if self._progress is None:
            return
        if new == "paused":
            self._progress.stop()
        elif new == "running" and old == "paused":
            self._progress.start()


class SummaryPrinter(DocumentRouter):
    """Prints the one-screen summary when a run stops.

    It reads the summary the pipeline keeps, so it must be subscribed after the
    pipeline: by then the pipeline's writers have named the file and the catalog node.
    """

    def __init__(self, summary_of: Callable[[str], RunSummary | None], show: Callable[[RunSummary], Any]) -> None:
        super().__init__()
        self._summary_of = summary_of
        self._show = show

    def stop(self, doc: RunStop) -> RunStop:
        summary = self._summary_of(doc["run_start"])
        if summary is not None:
            self._show(summary)
        return doc


def print_run_summary(summary: RunSummary, console: Console) -> None:
    """The one-screen summary of a run: status, points, file, catalog node, fits."""
    status_style = "green" if summary.status == "success" else "red"
    duration = "" if summary.finished is None else f" in {summary.finished - summary.started:.1f} s"
    console.print(
        f"[bold]{summary.experiment}[/bold] run {summary.run_uid[:8]}: "
        f"[{status_style}]{summary.status}[/{status_style}], {summary.points} points{duration}"
    )
    if summary.reason:
        console.print(f"  reason: {summary.reason}")
    # Paths and URIs stay on one line, so they can be copied.
    if summary.hdf5:
        console.print(f"  file:   {summary.hdf5}", soft_wrap=True)
    if summary.tiled:
        console.print(f"  tiled:  {summary.tiled}", soft_wrap=True)
        hint = how_to_open(summary.tiled)
        if hint:
            console.print(f"  open:   {hint}", soft_wrap=True)
    fits = list(fit_lines(summary.analysis))
    for key, text in fits:
        console.print(f"  fit {key} = {text}")
    if not fits and summary.status in ("success", "incomplete"):
        console.print(f"  no fit: {summary.no_fit_reason()}")
    for parameter_id, written in summary.parameters_written.items():
        console.print(f"  wrote {parameter_id} = {written['value']!r}")
