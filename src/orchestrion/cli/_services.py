"""`orchestrion up`, `down` and `status`: the lab's services."""

from __future__ import annotations

import sys

import click

from ._common import config_from, json_option, print_json, reports_errors


def _print_table(rows: list[dict[str, object]]) -> None:
    for row in rows:
        pid = "-" if row["pid"] is None else str(row["pid"])
        detail = f"  {row['detail']}" if row["detail"] else ""
        click.echo(f"{row['name']:13} {row['health']:10} pid {pid:>7}  {row['address']}{detail}")


@click.command()
@json_option
@click.pass_context
@reports_errors
def up(ctx: click.Context, as_json: bool) -> None:
    """Start Redis, Tiled, the queue server (environment open) and the scheduler."""
    from orchestrion.services import up as start

    rows = [s.to_dict() for s in start(config_from(ctx))]
    print_json(rows) if as_json else _print_table(rows)


@click.command()
@click.option("--force", is_flag=True, help="Stop even while a job runs (it goes back to the queue).")
@json_option
@click.pass_context
@reports_errors
def down(ctx: click.Context, force: bool, as_json: bool) -> None:
    """Stop the services started by `up`, scheduler first."""
    from orchestrion.services import down as stop

    rows = [s.to_dict() for s in stop(config_from(ctx), force=force)]
    print_json(rows) if as_json else _print_table(rows)


@click.command()
@json_option
@click.pass_context
@reports_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Each service with its pid, address and health (exit status 1 if any is not ok)."""
    from orchestrion.services import status as report

    rows = [s.to_dict() for s in report(config_from(ctx))]
    print_json(rows) if as_json else _print_table(rows)
    if any(row["health"] != "ok" for row in rows):
        sys.exit(1)
