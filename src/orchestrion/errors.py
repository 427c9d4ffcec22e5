"""Errors that users see: each carries one line that names the problem."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OrchestrionError(Exception):
    """Base of the errors Orchestrion reports to users as one clear line."""


class InputError(OrchestrionError, ValueError):
    """Bad input from a user (experiment, parameter, scan spec, sequence): nothing was done."""


class UnknownExperimentError(InputError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ParameterError(InputError):
    """An unknown parameter id or a value that breaks the parameter's declaration."""


class ScanSpecError(InputError):
    """A scan specification that cannot be expanded."""


class DeviceConfigError(OrchestrionError):
    """A device that cannot be built from its configuration entry."""


class PreprocessingError(OrchestrionError):
    """Pre-processing could not deliver a point's sequence: its worker process died, or
    the compiled sequence cannot be sent back from one."""


class DeviceError(OrchestrionError):
    """A device that misbehaved during a run (for example a failed read-back check)."""


class DeviceConnectionError(OrchestrionError):
    """Devices that could not connect, where the lab is set to refuse to start without them."""


# Error lines quote what the user typed: a pasted file or a runaway shell variable must
# still give one readable line that ends with the reason.
QUOTE_LIMIT = 60
LINE_LIMIT = 300


def _escaped(text: str) -> str:
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def quoted(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``text`` in single quotes, on one line, its middle cut out if it is longer than ``limit``."""
    shown = _escaped(str(text))
    if len(shown) > limit:
        keep = limit - 1
        shown = f"{shown[: keep * 2 // 3]}…{shown[len(shown) - (keep - keep * 2 // 3) :]}"
    return f"'{shown}'"


def one_line(message: str, limit: int = LINE_LIMIT) -> str:
    """``message`` as one line of at most ``limit`` characters, keeping its start and its end."""
    line = _escaped(message.strip())
    if len(line) <= limit:
        return line
    tail = limit // 3
    return f"{line[: limit - tail - 3]} … {line[len(line) - tail :]}"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``candidates`` to a mistyped ``word``, else ''."""
    close = difflib.get_close_matches(word, list(candidates), n=2, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(quoted(c) for c in close)}?)"
