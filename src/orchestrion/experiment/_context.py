"""The lab that plans run against, as the experiment layer sees it.

Plans reach their lab through this context, which lives below `orchestrion.lab`: the
lab module builds a lab and activates it here, so `lab` imports `experiment` and never
the other way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from orchestrion.errors import OrchestrionError

if TYPE_CHECKING:  # the device registry imports bluesky and ophyd-async; the protocol only names it
    from orchestrion.config import OrchestrionConfig
    from orchestrion.devices import DeviceRegistry
    from orchestrion.parameters import ParameterStore


class LabContext(Protocol):
    """What a running experiment needs of its lab."""

    @property
    def config(self) -> OrchestrionConfig: ...

    @property
    def devices(self) -> DeviceRegistry: ...

    @property
    def parameters(self) -> ParameterStore: ...


_active: LabContext | None = None


def activate(lab: LabContext | None) -> None:
    """Make ``lab`` the one that plans from the library run against (None: none)."""
    global _active
    _active = lab


def active_lab() -> LabContext:
    """The lab of this process; plans call this when they start."""
    if _active is None:
        raise OrchestrionError("no lab is active in this process: open one with orchestrion.lab.open_lab()")
    return _active
