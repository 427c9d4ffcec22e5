"""Lazy exports of a package: each name is imported from its module when first used.

A package's ``__init__`` that imported all its modules made ``from orchestrion.experiment
import Experiment`` import bluesky and ophyd-async too, seconds that a listing command
paid for nothing (issue 16, ADR 0813).  A package instead declares which module defines
each exported name (and imports them under ``TYPE_CHECKING`` for the type checker);
the module is imported at the first use of one of its names (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose ``globals()`` is ``namespace``.

    ``exports`` maps each '.module' of the package to the names it defines.
    """
    package = namespace["__name__"]
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # once: later uses do not come back here
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
