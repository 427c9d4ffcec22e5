"""The `orchestrion` command line."""

from __future__ import annotations

import logging

import click

from ._api import api_key
from ._catalog import catalog
from ._common import config_from, json_option, print_json, reports_errors
from ._devices import devices
from ._gui import gui, plot
from ._jobs import abort, cancel, job, jobs, pause, resume, submit
from ._params import params
from ._run import experiments, run
from ._services import down, status, up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Orchestrion: run and schedule experiments on the lab."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)


@cli.command("config")
@json_option
@click.option("--schema", is_flag=True, help="Print the JSON schema of the configuration instead.")
@click.pass_context
@reports_errors
def show_config(ctx: click.Context, as_json: bool, schema: bool) -> None:
    """Show the configuration in effect (secrets masked)."""
    from orchestrion.config import OrchestrionConfig

    if schema:
        print_json(OrchestrionConfig.model_json_schema())
        return
    print_json(config_from(ctx).model_dump(mode="json"))


@cli.command("sequence-schema")
def sequence_schema() -> None:
    """Print the JSON schema of pulse sequences."""
    from orchestrion.sequence import sequence_json_schema

    print_json(sequence_json_schema())


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
@reports_errors
def shell(ctx: click.Context) -> None:
    """Start IPython with the Orchestrion profile (extra arguments go to IPython)."""
    from IPython import start_ipython

    profile = config_from(ctx).profile_dir / "ipython"
    start_ipython(argv=["--profile-dir", str(profile), *ctx.args])


cli.add_command(run)
cli.add_command(experiments)
cli.add_command(devices)
cli.add_command(params)
cli.add_command(catalog)  # pipeline: `orchestrion catalog repair`
cli.add_command(api_key)
for _command in (up, down, status, submit, jobs, job, cancel, pause, resume, abort, gui, plot):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="orchestrion")


__all__ = ["cli", "main"]
