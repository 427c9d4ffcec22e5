"""`orchestrion run`, `experiments` and `devices`: the embedded way to work."""

from __future__ import annotations

import sys
from typing import Any

import click
from event_model import DocumentRouter
from event_model.documents import Event, EventDescriptor, EventPage, RunStart
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from orchestrion.devices import DeviceState
from orchestrion.errors import InputError
from orchestrion.experiment import PRIMARY, ScanPattern
from orchestrion.pipeline import RunSummary
from orchestrion.session import EmbeddedSession, RunOptions

from ._common import config_from, json_option, print_json, reports_errors


def parse_assignments(values: tuple[str, ...]) -> dict[str, str]:
    assignments: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set '{text}': expected ID=VALUE")
        if key.strip() in assignments:
            raise InputError(f"--set: parameter '{key.strip()}' is given twice")
        assignments[key.strip()] = value.strip()
    return assignments


def run_options(func: Any) -> Any:
    """The options `run` and `submit` share."""
    options = [
        click.option("--set", "assignments", multiple=True, metavar="ID=VALUE", help="Parameter value for this run."),
        click.option(
            "--scan", "scans", multiple=True, metavar="ID=START:STOP:NUM", help="Scan a parameter (repeatable: a grid)."
        ),
        click.option("--shots", type=int, default=None, help="Shots per point."),
        click.option("--repetitions", type=int, default=1, show_default=True, help="Repeat the whole scan."),
        click.option(
            "--pattern", type=click.Choice([p.value for p in ScanPattern]), default="linear", show_default=True
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


class ProgressBar(DocumentRouter):
    """A terminal progress bar over a run's primary events."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress
        self._task: Any = None
        self._primary: set[str] = set()

    def start(self, doc: RunStart) -> RunStart | None:
        total = _count(doc.get("num_points")) or None
        self._task = self._progress.add_task(str(doc.get("experiment", "run")), total=total)
        return doc

    def descriptor(self, doc: EventDescriptor) -> EventDescriptor | None:
        if doc.get("name") == PRIMARY:
            self._primary.add(doc["uid"])
        return doc

    def event(self, doc: Event) -> Event:
        if doc["descriptor"] in self._primary:
            self._progress.advance(self._task)
        return doc

    def event_page(self, doc: EventPage) -> EventPage:
        if doc["descriptor"] in self._primary:
            self._progress.advance(self._task, len(doc["seq_num"]))
        return doc


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


def print_summary(summary: RunSummary, console: Console) -> None:
    status_style = "green" if summary.status == "success" else "red"
    duration = "" if summary.finished is None else f" in {summary.finished - summary.started:.1f} s"
    console.print(
        f"[bold]{summary.experiment}[/bold] run {summary.run_uid[:8]}: "
        f"[{status_style}]{summary.status}[/{status_style}], {summary.points} points{duration}"
    )
    if summary.reason:
        console.print(f"  reason: {summary.reason}")
    if summary.hdf5:
        console.print(f"  file:   {summary.hdf5}")
    if summary.tiled:
        console.print(f"  tiled:  {summary.tiled}")
    values = {k: v for k, v in summary.analysis.items() if not k.endswith("_err")}
    for key, value in values.items():
        error = summary.analysis.get(f"{key}_err")
        console.print(f"  fit {key} = {value:.10g}" + (f" ± {error:.2g}" if error is not None else ""))
    for parameter_id, written in summary.parameters_written.items():
        console.print(f"  wrote {parameter_id} = {written['value']!r}")


@click.command()
@click.argument("experiment")
@run_options
@json_option
@click.pass_context
@reports_errors
def run(
    ctx: click.Context,
    experiment: str,
    assignments: tuple[str, ...],
    scans: tuple[str, ...],
    shots: int | None,
    repetitions: int,
    pattern: str,
    as_json: bool,
) -> None:
    """Run EXPERIMENT in this process on the lab, and report what it found."""
    config = config_from(ctx)
    session = EmbeddedSession(config)
    options = RunOptions(
        experiment,
        scans=list(scans) if scans else None,
        overrides=parse_assignments(assignments),
        shots=shots,
        repetitions=repetitions,
        pattern=pattern,
    )
    session.validate(options)  # refuses bad input before anything is opened or written
    console = Console(stderr=as_json)
    interactive = sys.stdout.isatty() and not as_json
    try:
        if interactive:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                summary = session.run(options, extra_callbacks=[ProgressBar(progress)])
        else:
            summary = session.run(options)
    finally:
        session.close()
    if as_json:
        print_json(summary.to_dict())
    else:
        print_summary(summary, console)
    if summary.status != "success":
        sys.exit(1)


@click.command()
@json_option
@click.pass_context
@reports_errors
def experiments(ctx: click.Context, as_json: bool) -> None:
    """List the experiment library with parameters and scan options."""
    config = config_from(ctx)
    session = EmbeddedSession(config)
    listing: list[dict[str, Any]] = [
        {
            "name": e.name,
            "description": e.description,
            "default_shots": e.default_shots,
            "default_scans": [{"id": a.id, "values": list(a.values)} for a in e.default_scans],
            "scan_patterns": [p.value for p in ScanPattern],
            "calibrates": dict(e.calibrates),
            "parameters": [spec.model_dump(mode="json") for spec in e.parameters],
        }
        for e in session.library
    ]
    if as_json:
        print_json(listing)
        return
    for item in listing:
        click.echo(f"{item['name']}: {item['description']}")
        for spec in item["parameters"]:
            bounds = f" [{spec['minimum']}, {spec['maximum']}]" if spec["minimum"] is not None else ""
            click.echo(f"    {spec['id']} = {spec['default']!r} {spec['unit']}{bounds}")


@click.command()
@json_option
@click.pass_context
@reports_errors
def devices(ctx: click.Context, as_json: bool) -> None:
    """List the lab's devices with class, readout role and state."""
    config = config_from(ctx)
    session = EmbeddedSession(config)
    from orchestrion.devices import connect_devices

    connect_devices(session.devices)
    listing = [
        {
            "name": d.name,
            "class": d.entry.class_,
            "role": d.role.value,
            "state": d.state.value,
            "enabled": d.entry.enabled,
            "description": d.entry.description,
            "error": d.error,
        }
        for d in session.devices
    ]
    if as_json:
        print_json(listing)
        return
    for item in listing:
        mark = "" if item["state"] == DeviceState.CONNECTED.value else f" ({item['state']})"
        click.echo(f"{item['name']:12} {item['role']:11} {item['class']}{mark}")
