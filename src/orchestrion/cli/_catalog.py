"""`orchestrion catalog`: the Tiled catalog of runs, and completing it from what was kept."""

from __future__ import annotations

import sys

import click

from orchestrion.pipeline import recover_orphans, repair_catalog

from ._common import config_from, json_option, print_json, reports_errors


@click.group()
def catalog() -> None:
    """The catalog of runs (Tiled)."""


@catalog.command()
@json_option
@click.pass_context
@reports_errors
def repair(ctx: click.Context, as_json: bool) -> None:
    """Complete the catalog: runs missing from it, or missing rows, from their spooled documents.

    Files whose writer died are recovered first (or set aside, with a record, when they
    cannot be read).  Exits non-zero if a run could not be completed.
    """
    config = config_from(ctx)
    files = recover_orphans(config.data_dir)
    runs = repair_catalog(config) if config.tiled_enabled else []
    if as_json:
        print_json({
            "files": [{"path": str(f.path), "action": f.action, "points": f.points, "reason": f.reason} for f in files],
            "runs": [r.to_dict() for r in runs],
        })  # fmt: skip
    else:
        for f in files:
            click.echo(f"{f.path}: {f.action}" + (f" ({f.reason})" if f.reason else ""))
        for r in runs:
            click.echo(f"run {r.run}: {r.action}, {r.rows} points" + "".join(f"; {p}" for p in r.problems))
        if not files and not runs:
            click.echo("nothing to repair")
    if any(r.action == "failed" for r in runs):
        sys.exit(1)
