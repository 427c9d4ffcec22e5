"""`orchestrion params list|get|set|history`: the parameter store from the command line.

Every command loads the experiment library first: its declarations say which ids exist
and what values they take, so an unknown id or a bad value is refused before the store
is opened, and nothing is written.  When an API server is named (`ORCHESTRION_API_URL`)
or the local stack runs one, the commands go through it instead, and it checks the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from orchestrion.config import OrchestrionConfig
from orchestrion.errors import ParameterError
from orchestrion.identity import current_user
from orchestrion.parameters import ParameterSpec, ParameterStore, ParameterValue, open_parameter_store
from orchestrion.times import parse_time

from ._common import config_from, json_option, print_json, reports_errors


def declared_specs(config: OrchestrionConfig) -> dict[str, ParameterSpec]:
    """The parameters the experiment library declares, by id."""
    from orchestrion.experiment import ExperimentLibrary

    library = ExperimentLibrary.load(config.plans_dir)
    return {spec.id: spec for spec in library.parameter_specs()}


def known_spec(specs: dict[str, ParameterSpec], parameter_id: str) -> ParameterSpec:
    try:
        return specs[parameter_id]
    except KeyError:
        raise ParameterError(f"unknown parameter '{parameter_id}' (see `orchestrion params list`)") from None


def parse_option_time(text: str | None, option: str) -> datetime | None:
    """An ISO-8601 time from the command line (`orchestrion.times.parse_time`), if given."""
    return None if text is None else parse_time(text, option)


@contextmanager
def opened_store(config: OrchestrionConfig, specs: dict[str, ParameterSpec]) -> Iterator[ParameterStore]:
    """The configured store with the library's parameters declared (missing ones created)."""
    store = open_parameter_store(config)
    try:
        store.declare(specs.values())
        yield store
    finally:
        store.close()


def cli_source() -> str:
    """Who a command-line write is recorded as: `cli:<user>`."""
    return f"cli:{current_user()}"


def entry(value: ParameterValue, spec: ParameterSpec) -> dict[str, Any]:
    return value.entry(spec.unit)


def _shown(value: ParameterValue, spec: ParameterSpec) -> str:
    return f"{value.value!r} {spec.unit}".rstrip()


def _remote(ctx: click.Context) -> Any:
    """The API client when the commands go through the API server; None to use the store here."""
    from ._jobs import api_available

    config = config_from(ctx)
    if not api_available(config):
        return None
    from orchestrion.client import Client  # httpx: a tenth of a second, for the API alone

    return Client.local(config)


def _remote_shown(entry: dict[str, Any]) -> str:
    return f"{entry['value']!r} {entry.get('unit') or ''}".rstrip()


@click.group("params")
def params() -> None:
    """Read and write stored parameters, with their history."""


@params.command("list")
@click.argument("namespaces", nargs=-1)
@json_option
@click.pass_context
@reports_errors
def list_params(ctx: click.Context, namespaces: tuple[str, ...], as_json: bool) -> None:
    """Every declared parameter (or those of NAMESPACES) with its value now."""
    remote = _remote(ctx)
    if remote is not None:
        with remote:
            rows = remote.parameters(*namespaces)
        if as_json:
            print_json(rows)
        for row in [] if as_json else rows:
            click.echo(f"{row['id']}  {_remote_shown(row):24}  {row['timestamp']}  {row['source']}")
        return
    config = config_from(ctx)
    specs = declared_specs(config)
    with opened_store(config, specs) as store:
        values = store.snapshot(namespaces or list(specs))
    if as_json:
        print_json(
            [
                {
                    **entry(value, specs[pid]),
                    **specs[pid].model_dump(mode="json", include={"type", "default", "minimum", "maximum"}),
                    **specs[pid].model_dump(mode="json", include={"allowed", "description", "group"}),
                }
                for pid, value in values.items()
            ]
        )
        return
    width = max((len(pid) for pid in values), default=0)
    for pid, value in values.items():
        when = f"{value.timestamp:%Y-%m-%d %H:%M:%S}"
        click.echo(f"{pid:{width}}  {_shown(value, specs[pid]):24}  {when}  {value.source}")


@params.command("get")
@click.argument("parameter_id", metavar="ID")
@click.option("--at", "at", metavar="TIME", help="The value as it was at this ISO-8601 time (UTC unless given).")
@json_option
@click.pass_context
@reports_errors
def get_param(ctx: click.Context, parameter_id: str, at: str | None, as_json: bool) -> None:
    """The value of ID now, or as it was at TIME."""
    moment = parse_option_time(at, "--at")
    remote = _remote(ctx)
    if remote is not None:
        with remote:
            row = remote.get(parameter_id, at=None if moment is None else moment.isoformat())
        if as_json:
            print_json(row)
        else:
            click.echo(f"{parameter_id} = {_remote_shown(row)}  (set {row['timestamp']} by {row['source']})")
        return
    config = config_from(ctx)
    specs = declared_specs(config)
    spec = known_spec(specs, parameter_id)
    with opened_store(config, specs) as store:
        value = store.get(parameter_id, at=moment)
    if as_json:
        print_json(entry(value, spec))
    else:
        click.echo(f"{parameter_id} = {_shown(value, spec)}  (set {value.timestamp.isoformat()} by {value.source})")


@params.command("set")
@click.argument("parameter_id", metavar="ID")
@click.argument("value")
@json_option
@click.pass_context
@reports_errors
def set_param(ctx: click.Context, parameter_id: str, value: str, as_json: bool) -> None:
    """Store VALUE for ID, checked against its declaration (type, bounds, allowed values)."""
    remote = _remote(ctx)
    if remote is not None:
        with remote:
            # The server parses numbers and booleans from JSON; text that is one is sent as one.
            row = remote.set(parameter_id, _json_value(value))
        if as_json:
            print_json(row)
        else:
            click.echo(f"{parameter_id} = {_remote_shown(row)}  (was {_remote_shown(row['previous'])})")
        return
    config = config_from(ctx)
    specs = declared_specs(config)
    spec = known_spec(specs, parameter_id)
    checked = spec.parse_text(value)  # refused here, before the store is even opened
    with opened_store(config, specs) as store:
        previous = store.get(parameter_id)
        stored = store.set(parameter_id, checked, source=cli_source())
    if as_json:
        print_json({**entry(stored, spec), "previous": entry(previous, spec)})
    else:
        click.echo(f"{parameter_id} = {_shown(stored, spec)}  (was {_shown(previous, spec)})")


@params.command("history")
@click.argument("parameter_id", metavar="ID")
@click.option("--since", metavar="TIME", help="From this ISO-8601 time on.")
@click.option("--until", metavar="TIME", help="Up to this ISO-8601 time.")
@json_option
@click.pass_context
@reports_errors
def history_param(ctx: click.Context, parameter_id: str, since: str | None, until: str | None, as_json: bool) -> None:
    """Every value ID had, oldest first, with when and by whom it was set."""
    start, end = parse_option_time(since, "--since"), parse_option_time(until, "--until")
    remote = _remote(ctx)
    if remote is not None:
        with remote:
            rows = remote.history(
                parameter_id, None if start is None else start.isoformat(), None if end is None else end.isoformat()
            )
        if as_json:
            print_json(rows)
        for row in [] if as_json else rows:
            click.echo(f"{row['timestamp']}  {_remote_shown(row):24}  {row['source']}")
        return
    config = config_from(ctx)
    specs = declared_specs(config)
    spec = known_spec(specs, parameter_id)
    with opened_store(config, specs) as store:
        values = store.history(parameter_id, since=start, until=end)
    if as_json:
        print_json([entry(value, spec) for value in values])
        return
    for value in values:
        click.echo(f"{value.timestamp.isoformat()}  {_shown(value, spec):24}  {value.source}")


def _json_value(text: str) -> Any:
    """A command-line value as the JSON value it spells (1e6, true, "text"); else the text itself."""
    import json

    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float) and not isinstance(value, bool) else text
