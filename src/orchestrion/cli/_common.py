"""What every command shares: configuration, error reporting, JSON output."""

from __future__ import annotations

import json
import logging
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
