"""Documents as bytes on the bus: JSON (orjson), numpy arrays as lists.

JSON rather than pickle: consumers on other machines, in other languages or versions,
read the bus, and unpickling what a network peer wrote runs its code.
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _fallback(value: Any) -> Any:
    # numpy scalars that orjson does not take natively, sets, enums, paths...
    for attribute in ("tolist", "item"):
        method = getattr(value, attribute, None)
        if callable(method):
            return method()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def encode(doc: dict[str, Any]) -> bytes:
    """A document as JSON bytes."""
    return orjson.dumps(doc, default=_fallback, option=_OPTIONS)


def decode(data: bytes | str) -> dict[str, Any]:
    """The document ``encode`` made."""
    doc: dict[str, Any] = orjson.loads(data)
    return doc
