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

if TYPE_CHECKING:
    from ._experiment import Experiment
    from ._request import RunRequest
    from ._runner import RunStart


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


class RunStarts(Protocol):
    """Runs prepared ahead, while the job before them runs (the worker's `AheadPreparer`, ADR 0313)."""

    def take(self, job_id: int, experiment: Experiment, run: RunRequest) -> RunStart | None:
        """Job ``job_id``'s prepared start if it still holds (taken once); None: prepare it now."""
        ...

    def under_way(self) -> None:
        """The running job is past its first points or its last: look at the next one (never blocks)."""
        ...


_starts: RunStarts | None = None


def activate_starts(starts: RunStarts | None) -> None:
    """Make ``starts`` where job runs of this process look for their prepared start (None: nowhere)."""
    global _starts
    _starts = starts


def active_starts() -> RunStarts | None:
    return _starts
