"""One clear line for the errors users make in a session; the traceback stays for %tb."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from bluesky.utils import FailedStatus, RunEngineInterrupted
from pydantic import ValidationError

from orchestrion.errors import OrchestrionError

# Errors that are about the experiment, not a bug in the code: a wall of traceback
# helps nobody.  Anything else still shows IPython's full traceback.
USER_FACING: tuple[type[BaseException], ...] = (OrchestrionError, FailedStatus, ValidationError)


def one_line(error: BaseException) -> str:
    """The most telling message of an error: the innermost cause that has something to say."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for candidate in reversed(chain):
        if isinstance(candidate, OrchestrionError | ValueError) and not isinstance(candidate, FailedStatus):
            text = str(candidate).strip()
            if text:
                return text.splitlines()[0]
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}"


def show_user_error(
    shell: Any, etype: type[BaseException], value: BaseException, tb: TracebackType | None, tb_offset: int | None = None
) -> None:
    """IPython custom exception handler: print one line, keep the traceback for %tb."""
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
    if isinstance(value, RunEngineInterrupted):
        # bluesky's own message lists what can be done next (resume, stop, abort, halt).
        print(str(value), file=sys.stderr)
        return
    print(f"error: {one_line(value)}   (%tb shows the traceback)", file=sys.stderr)


def install_error_handler(shell: Any) -> None:
    shell.set_custom_exc((*USER_FACING, RunEngineInterrupted), show_user_error)
