"""`orchestrion api-key create`: keys of the stack's API server."""

from __future__ import annotations

import getpass
import itertools

import click

from ._common import config_from, json_option, print_json, reports_errors

ROLES = ["admin", "user", "observer"]


@click.group("api-key")
def api_key() -> None:
    """API keys of the stack's API server (admins only)."""


@api_key.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the key's holder may do.")
@click.option("--name", default=None, help="Who holds it (default: ROLE-N for observers, else your user name).")
@click.option("--note", default="", help="A note kept with the key.")
@json_option
@click.pass_context
@reports_errors
def create(ctx: click.Context, role: str, name: str | None, note: str, as_json: bool) -> None:
    """Make a new key and print it once: it is stored only hashed."""
    from orchestrion.client import Client
    from orchestrion.errors import InputError

    with Client.local(config_from(ctx)) as client:
        if name is not None:
            made = client.create_key(role, name, note)
        else:
            base = f"{role}-" if role == "observer" else f"{_user()}-{role}-"
            for number in itertools.count(1):
                try:
                    made = client.create_key(role, f"{base}{number}", note)
                    break
                except InputError as exc:
                    if "already holds" not in str(exc):
                        raise
    if as_json:
        print_json(made)
    else:
        click.echo(made["key"])
        click.echo(f"(key of '{made['name']}', role {made['role']}: shown once, keep it safe)", err=True)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"
