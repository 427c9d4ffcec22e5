"""Who is at the keyboard: the user name that submissions and parameter writes record."""

from __future__ import annotations

import getpass


def current_user() -> str:
    """This process's user name; ``unknown`` where there is none (a bare container)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
