"""`orchestrion gui` and `orchestrion plot`: the Qt GUI, and a run's figure at the terminal."""

from __future__ import annotations

import os
from pathlib import Path

import click

from orchestrion.errors import InputError

from ._common import config_from, reports_errors


# "-1" (the latest run) is an argument, not an option.
@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("run_or_job")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the figure here (PNG, SVG, PDF) instead."
)
@click.pass_context
@reports_errors
def plot(ctx: click.Context, run_or_job: str, out: Path | None) -> None:
    """Draw a run as the GUI's data page does: RUN_OR_JOB is a run uid (or prefix), a job id, or -1 (latest).

    Runs are read from the configured Tiled server, the local stack's, or the embedded
    catalog under $ORCHESTRION_HOME.
    """
    from orchestrion.gui import find_run, open_catalog, plot_run, run_data_from_node, save_figure, show_figure

    if out is None and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("no display to show the figure on: write it to a file with --out FILE.png")
    connection = open_catalog(config_from(ctx))
    try:
        drawn = plot_run(run_data_from_node(find_run(connection.client, run_or_job)))
    finally:
        connection.close()
    if out is None:
        show_figure(drawn)
        return
    click.echo(save_figure(drawn, out))


@click.command()
@click.option("--url", envvar="ORCHESTRION_API_URL", help="The API server (default: the local stack's).")
@click.option("--api-key", envvar="ORCHESTRION_API_KEY", help="An API key (default: the local stack's admin key).")
@click.option(
    "--screenshot",
    type=click.Path(file_okay=False, path_type=Path),
    help="Render each page, filled from the stack, to one PNG per page in this directory, and exit.",
)
@click.pass_context
@reports_errors
def gui(ctx: click.Context, url: str | None, api_key: str | None, screenshot: Path | None) -> None:
    """The Qt GUI: experiments, queue and history, data, parameters, devices."""
    from orchestrion.gui import run_gui

    raise SystemExit(run_gui(config_from(ctx), url=url, api_key=api_key, screenshot=screenshot))
