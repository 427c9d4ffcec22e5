"""`orchestrion devices`: the lab's devices, and switching them on and off.

With a stack's API server (named by ``ORCHESTRION_API_URL``, or the local stack's), the
commands go through it, as the job and parameter commands do: a lab PC lists and switches
the stack's devices with only the URL and a key, and a switch is recorded as made by the
key's holder.  Without one, they read the lab's configuration and switches here.
"""

from __future__ import annotations

import getpass
from typing import Any

import click

from orchestrion.devices import (
    DeviceState,
    DeviceSwitch,
    connect_devices,
    describe_devices,
    device_history,
    disable_device,
    enable_device,
    load_devices,
    load_lab_config,
)
from orchestrion.errors import InputError

from ._common import config_from, json_option, print_json, reports_errors
from ._jobs import api_available


def _remote(ctx: click.Context) -> Any:
    """The API client when the commands go through the API server; None to work here."""
    config = config_from(ctx)
    if not api_available(config):
        return None
    from orchestrion.client import Client  # httpx: a tenth of a second, for the API alone

    return Client.local(config)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
@reports_errors
def devices(ctx: click.Context, as_json: bool) -> None:
    """List the lab's devices with class, readout role, state and why one is not in use.

    Connects every enabled device (each within its timeout) to report its real state.
    """
    if ctx.invoked_subcommand is not None:
        return
    remote = _remote(ctx)
    if remote is not None:
        with remote:
            listing = remote.devices()
    else:
        # Built as a run builds them (strictly) and connected, in a loop of their own: no
        # RunEngine, whose constructor imports ophyd 1.x, and no experiment library.
        registry = load_devices(config_from(ctx))
        connect_devices(registry, own_loop=True)
        listing = describe_devices(registry)
    if as_json:
        print_json(listing)
        return
    for item in listing:
        mark = "" if item["state"] == DeviceState.CONNECTED.value else f"  {item['state'].upper()}: {item['reason']}"
        click.echo(f"{item['name']:12} {item['role']:11} {item['class']}{mark}")


def _switch(ctx: click.Context, name: str, enabled: bool, reason: str, user: str | None, as_json: bool) -> None:
    remote = _remote(ctx)
    if remote is not None:
        if user is not None:
            raise InputError("--user: through the API server a change is recorded as made by the key's holder")
        with remote:
            answer = (remote.enable_device if enabled else remote.disable_device)(name, reason=reason)
        change = DeviceSwitch.from_dict(answer["switch"])
    else:
        config = config_from(ctx)
        change = (enable_device if enabled else disable_device)(config, name, user=user or _user(), reason=reason)
    if as_json:
        print_json(change.to_dict())
    else:
        click.echo(f"{name}: {change.describe()}")


_reason = click.option("--reason", default="", help="Why (kept with the change).")
_as_user = click.option("--user", default=None, help="Who makes the change (default: the login name).")


@devices.command("enable")
@click.argument("name")
@_reason
@_as_user
@json_option
@click.pass_context
@reports_errors
def enable(ctx: click.Context, name: str, reason: str, user: str | None, as_json: bool) -> None:
    """Switch device NAME on (kept across restarts; used from the next run on)."""
    _switch(ctx, name, True, reason, user, as_json)


@devices.command("disable")
@click.argument("name")
@_reason
@_as_user
@json_option
@click.pass_context
@reports_errors
def disable(ctx: click.Context, name: str, reason: str, user: str | None, as_json: bool) -> None:
    """Switch device NAME off: left out of runs, experiments that need it are refused."""
    _switch(ctx, name, False, reason, user, as_json)


@devices.command("history")
@click.argument("name", required=False)
@json_option
@click.pass_context
@reports_errors
def history(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Every enable and disable (of device NAME, if given), oldest first."""
    remote = _remote(ctx)
    if remote is not None:
        with remote:
            changes = [DeviceSwitch.from_dict(entry) for entry in remote.device_history(name)]
    else:
        config = config_from(ctx)
        if name is not None and name not in load_lab_config(config.devices_dir).devices:
            raise InputError(f"no device named '{name}' in the lab configuration")
        changes = device_history(config, name)
    listing: list[dict[str, Any]] = [c.to_dict() for c in changes]
    if as_json:
        print_json(listing)
        return
    for change in changes:
        click.echo(f"{change.device:12} {change.describe()}")
