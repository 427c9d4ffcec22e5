"""What every command shares: configuration, error reporting, JSON output."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.errors import OrchestrionError, one_line

P = ParamSpec("P")
R = TypeVar("R")

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


_ending: dict[str, Any] = {"skip_teardown": False, "status": 0}


def end_without_teardown() -> None:
    """Let this process end without tearing down its modules, once the command returns.

    For a command that has closed everything it opened (`orchestrion run`: its session,
    with its files, stores and post-processing process): what is left at exit is the
    interpreter's teardown of bluesky's, ophyd's, scipy's, matplotlib's and h5py's
    modules, a second on a busy machine, that only delays the shell prompt.  The exit
    handlers still run (`main` ends the process after the last of them); only the
    teardown is skipped, as a multiprocessing child skips it.  Only under `main` (the
    console script): a command invoked in-process returns as usual.
    """
    _ending["skip_teardown"] = True


def exit_status(code: object) -> int:
    """The status `sys.exit(code)` gives (its message, if any, is printed by then)."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def end_now() -> None:
    """The console script's last exit handler: end here if the command said it may."""
    if not _ending["skip_teardown"]:
        return
    logging.shutdown()  # registered before this handler, so it would run after it
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to flush to
            stream.flush()
    os._exit(_ending["status"])


def config_from(ctx: click.Context) -> OrchestrionConfig:
    config = ctx.obj.get("config") if ctx.obj else None
    if config is None:
        config = load_config()
        ctx.ensure_object(dict)["config"] = config
    return config


def print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn Orchestrion's user-facing errors into one line on stderr and exit status 2.

    The line is shortened if it must be: a pasted file given as a value still gives one
    readable line that ends with the reason.
    """

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except OrchestrionError as exc:
            logging.getLogger("orchestrion").debug("command failed", exc_info=True)
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(2)

    return wrapper
