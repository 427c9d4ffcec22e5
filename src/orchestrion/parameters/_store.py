"""The parameter-store protocol, and the shared logic its backends build on."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from orchestrion.errors import ParameterError

from ._spec import ParameterSpec, ParameterValue

if TYPE_CHECKING:
    from orchestrion.config import OrchestrionConfig


@runtime_checkable
class ParameterStore(Protocol):
    """Where parameters live: typed values with full history, readable as of a time."""

    def declare(self, specs: Iterable[ParameterSpec]) -> list[str]:
        """Register declarations; create missing parameters at their defaults.

        Never overwrites a stored value. Returns the ids that were created.
        """
        ...

    def specs(self) -> Mapping[str, ParameterSpec]:
        """Every declared parameter, by id."""
        ...

    def get(self, parameter_id: str, at: datetime | None = None) -> ParameterValue:
        """The value now, or as it was at ``at``."""
        ...

    def snapshot(self, ids: Iterable[str], at: datetime | None = None) -> dict[str, ParameterValue]:
        """Several values in one read, as of one time."""
        ...

    def set(self, parameter_id: str, value: Any, source: str) -> ParameterValue:
        """Validate and store a new value; a bad value raises and writes nothing."""
        ...

    def history(
        self, parameter_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[ParameterValue]:
        """Every value the parameter had in a time range, oldest first."""
        ...

    def close(self) -> None: ...


class BaseParameterStore(ABC):
    """Validation and declaration handling shared by every backend.

    Backends implement the four storage primitives; everything a user can get wrong
    is checked here, before a backend is asked to write.
    """

    def __init__(self) -> None:
        self._specs: dict[str, ParameterSpec] = {}
        self._lock = threading.RLock()

    # -- storage primitives --------------------------------------------------------
    @abstractmethod
    def _write(self, value: ParameterValue, spec: ParameterSpec) -> None: ...

    @abstractmethod
    def _read(self, ids: list[str], at: datetime | None) -> dict[str, ParameterValue]:
        """Latest value at or before ``at`` for each id that has one."""

    @abstractmethod
    def _read_history(self, parameter_id: str, since: datetime | None, until: datetime | None) -> list[ParameterValue]: ...

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release connections."""

    # -- protocol --------------------------------------------------------------------
    def declare(self, specs: Iterable[ParameterSpec]) -> list[str]:
        created: list[str] = []
        with self._lock:
            incoming = list(specs)
            for spec in incoming:
                known = self._specs.get(spec.id)
                if known is not None and known != spec:
                    raise ParameterError(f"{spec.id}: declared twice with different declarations")
                self._specs[spec.id] = spec
            stored = self._read([s.id for s in incoming], None)
            for spec in incoming:
                if spec.id not in stored:
                    self._write(ParameterValue(id=spec.id, value=spec.default, timestamp=_now(), source="default"), spec)
                    created.append(spec.id)
        return created

    def specs(self) -> Mapping[str, ParameterSpec]:
        return dict(self._specs)

    def spec(self, parameter_id: str) -> ParameterSpec:
        try:
            return self._specs[parameter_id]
        except KeyError:
            raise ParameterError(f"unknown parameter '{parameter_id}'") from None

    def get(self, parameter_id: str, at: datetime | None = None) -> ParameterValue:
        return self.snapshot([parameter_id], at)[parameter_id]

    def snapshot(self, ids: Iterable[str], at: datetime | None = None) -> dict[str, ParameterValue]:
        wanted = list(dict.fromkeys(ids))
        for parameter_id in wanted:
            self.spec(parameter_id)
        found = self._read(wanted, _utc(at) if at else None)
        missing = [i for i in wanted if i not in found]
        if missing:
            when = f" at {at.isoformat()}" if at else ""
            raise ParameterError(f"parameter '{missing[0]}' has no value{when}")
        return {i: found[i] for i in wanted}

    def set(self, parameter_id: str, value: Any, source: str) -> ParameterValue:
        spec = self.spec(parameter_id)
        checked = spec.validate_value(value)
        entry = ParameterValue(id=parameter_id, value=checked, timestamp=_now(), source=source)
        with self._lock:
            self._write(entry, spec)
        return entry

    def history(
        self, parameter_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[ParameterValue]:
        self.spec(parameter_id)
        return self._read_history(parameter_id, _utc(since) if since else None, _utc(until) if until else None)


class MemoryParameterStore(BaseParameterStore):
    """Parameters in this process only: for a throw-away session or a test."""

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[str, list[ParameterValue]] = {}

    def _write(self, value: ParameterValue, spec: ParameterSpec) -> None:
        self._values.setdefault(value.id, []).append(value)

    def _read(self, ids: list[str], at: datetime | None) -> dict[str, ParameterValue]:
        found: dict[str, ParameterValue] = {}
        for parameter_id in ids:
            candidates = [v for v in self._values.get(parameter_id, []) if at is None or v.timestamp <= at]
            if candidates:
                found[parameter_id] = candidates[-1]
        return found

    def _read_history(self, parameter_id: str, since: datetime | None, until: datetime | None) -> list[ParameterValue]:
        return [
            v
            for v in self._values.get(parameter_id, [])
            if (since is None or v.timestamp >= since) and (until is None or v.timestamp <= until)
        ]


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """Naive times are taken as UTC, the store's clock."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def open_parameter_store(config: OrchestrionConfig) -> ParameterStore:
    """The store the configuration names."""
    # Until the persistent backends land, parameters live for the process only.
    return MemoryParameterStore()
