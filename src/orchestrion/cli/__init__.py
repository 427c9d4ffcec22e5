"""The `orchestrion` command line.

Each command's module is imported only when that command runs (`LazyGroup`): the
modules behind them import the lab, the pipeline, the analysis or the GUI, seconds of
imports that a listing command must not pay for the others (issue 16).
"""

from __future__ import annotations

import atexit
import importlib
import logging

import click

from ._common import _ending, config_from, end_now, exit_status, json_option, print_json, reports_errors

COMMANDS = {
    "run": "._run:run",
    "experiments": "._run:experiments",
    "devices": "._devices:devices",
    "params": "._params:params",
    "catalog": "._catalog:catalog",  # pipeline: `orchestrion catalog repair`
    "api-key": "._api:api_key",
    "up": "._services:up",
    "down": "._services:down",
    "status": "._services:status",
    "submit": "._jobs:submit",
    "jobs": "._jobs:jobs",
    "job": "._jobs:job",
    "cancel": "._jobs:cancel",
    "pause": "._jobs:pause",
    "resume": "._jobs:resume",
    "abort": "._jobs:abort",
    "gui": "._gui:gui",
    "plot": "._gui:plot",
}
"""Command name -> ``.module:attribute`` of its click command, imported when it runs."""


class LazyGroup(click.Group):
    """A click group whose `COMMANDS` are imported when one is looked up, not before."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, _, attribute = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module, __name__), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{COMMANDS[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Orchestrion: run and schedule experiments on the lab."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_without_runengine_tracebacks)
    ctx.ensure_object(dict)


def _without_runengine_tracebacks(record: logging.LogRecord) -> bool:
    """bluesky logs every failed run as "Run aborted" with the plan's traceback; the
    command says in one line why its run failed (a device that failed at a point, named):
    the traceback is shown with ``-v``."""
    return not (record.name == "bluesky" and record.getMessage() == "Run aborted")


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


def main() -> None:
    # Registered first, so run last: after every other exit handler (ADR 0813).
    atexit.register(end_now)
    try:
        cli(prog_name="orchestrion")
    except SystemExit as exc:
        _ending["status"] = exit_status(exc.code)
        raise
    except BaseException:  # Ctrl-C or a bug after the command's end: Python's own way out
        _ending["skip_teardown"] = False
        raise


__all__ = ["cli", "main"]
