"""`orchestrion run` and `experiments`: the embedded way to work."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from orchestrion.errors import InputError, one_line, quoted

from ._common import config_from, end_without_teardown, json_option, print_json, reports_errors


class SignalInterrupt(BaseException):
    """SIGINT or SIGTERM outside the RunEngine's run (which aborts the run instead)."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(signum.name)
        self.signal = signum


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise `SignalInterrupt`: SIGTERM unwinds (closing files) as Ctrl-C does."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise SignalInterrupt(signal.Signals(signum))

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_assignments(values: tuple[str, ...]) -> dict[str, str]:
    assignments: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {quoted(text)}: expected ID=VALUE")
        if key.strip() in assignments:
            raise InputError(f"--set: parameter {quoted(key.strip())} is given twice")
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
        # Checked by the run request (`ScanPattern`, one line naming the choices), so that
        # `submit`, which shares these options, need not import the experiment layer.
        click.option(
            "--pattern", default="linear", show_default=True, help="Order of the points: linear, shuffled or centred."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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
    """Run EXPERIMENT in this process on the lab, and report what it found.

    Ctrl-C (SIGINT) or SIGTERM aborts the run: its file is closed and marked 'abort',
    one line says so, and the exit status is 130 or 143.
    """
    # The post-processing process first, before this process imports the session, the
    # pipeline and bluesky: its own imports (Tiled's server, seconds) overlap them.
    from orchestrion.pipeline import leave_standby, start_post_processing

    start_post_processing(config_from(ctx))
    # Imported here: the lab, the pipeline and the display are this command's alone.
    from rich.console import Console

    from orchestrion.experiment import RunRequest
    from orchestrion.session import EmbeddedSession, RunInterrupted
    from orchestrion.shell import ProgressDisplay, print_run_summary

    config = config_from(ctx)
    # The post-processing process starts at once, held: its imports overlap the lab's set-up.
    session = EmbeddedSession(config, early_pipeline=True)
    try:
        request = RunRequest.build(
            experiment=experiment,
            scan=scans or None,
            parameters=parse_assignments(assignments),
            shots=shots,
            repetitions=repetitions,
            pattern=pattern,
        )
        session.validate(request)  # refuses bad input before anything is opened or written
    except BaseException:
        session.close()  # the held post-processing process goes, having written nothing
        raise
    console = Console(stderr=as_json)
    interactive = sys.stdout.isatty() and not as_json
    try:
        with signals_interrupt():
            try:
                summary = session.run(request, extra_callbacks=[ProgressDisplay(console)] if interactive else [])
            finally:
                session.close()
    except RunInterrupted as exc:
        leave_standby(config)
        if as_json and exc.summary is not None:
            print_json(exc.summary.to_dict())
        click.echo(one_line(str(exc)), err=True)
        sys.exit(exc.exit_code)
    except SignalInterrupt as exc:  # before the run started, or while its data were finished
        click.echo(f"interrupted by {exc.signal.name}", err=True)
        sys.exit(128 + int(exc.signal))
    # The next run adopts this one's successor, imported by then (ADR 0814).
    leave_standby(config)
    end_without_teardown()  # the session is closed: its files, stores and helper with it
    if as_json:
        print_json(summary.to_dict())
    else:
        print_run_summary(summary, console)
    if summary.status != "success":
        sys.exit(1)


@click.command()
@json_option
@click.pass_context
@reports_errors
def experiments(ctx: click.Context, as_json: bool) -> None:
    """List the experiment library with parameters and scan options."""
    # The library alone: no RunEngine (it imports ophyd to note its version) and no devices.
    from orchestrion.experiment import ExperimentLibrary

    config = config_from(ctx)
    listing: list[dict[str, Any]] = [e.describe() for e in ExperimentLibrary.load(config.plans_dir)]
    if as_json:
        print_json(listing)
        return
    for item in listing:
        click.echo(f"{item['name']}: {item['description']}")
        for spec in item["parameters"]:
            bounds = f" [{spec['minimum']}, {spec['maximum']}]" if spec["minimum"] is not None else ""
            click.echo(f"    {spec['id']} = {spec['default']!r} {spec['unit']}{bounds}")
