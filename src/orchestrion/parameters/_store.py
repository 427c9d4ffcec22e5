"""The parameter-store protocol, and the shared logic its backends build on."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from orchestrion.errors import OrchestrionError, ParameterError

from ._spec import ParameterSpec, ParameterValue

if TYPE_CHECKING:
    from orchestrion.config import OrchestrionConfig


class ParameterStoreError(OrchestrionError):
    """The store could not do what was asked (a refused write, a broken database)."""


class ParameterStoreUnavailable(ParameterStoreError):
    """The store cannot be reached: nothing was read or written."""


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

    def snapshot(
        self, ids: Iterable[str], at: datetime | None = None, *, latest: Iterable[str] = ()
    ) -> dict[str, ParameterValue]:
        """Several values in one read, as of ``at``; namespaces stand for all their ids.

        Ids and namespaces in ``latest`` are added and read at their latest even when
        ``at`` is given: a queued job reads its own experiment's parameters as of its
        submission and the shared ones (qubit, detection) as they are now.
        """
        ...

    def set(self, parameter_id: str, value: Any, source: str) -> ParameterValue:
        """Validate and store a new value; a bad value raises and writes nothing."""
        ...

    def history(
        self, parameter_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[ParameterValue]:
        """Every value the parameter had in a time range, oldest first."""
        ...

    def invalidate(self, ids: Iterable[str] | None = None) -> None:
        """Forget cached values (all, or those of ``ids``): the next read asks the backend."""
        ...

    def change_mark(self) -> Hashable | None:
        """A cheap mark of everything stored: it differs after any write, here or elsewhere.

        Equal marks mean that nothing was written in between, so a snapshot read after
        the first is still what a read now would return (ADR 0313).  None: this backend
        cannot tell without reading the values again.
        """
        ...

    def close(self) -> None: ...


class BaseParameterStore(ABC):
    """Validation, declaration handling and the read-through cache, shared by every backend.

    Backends implement the storage primitives; everything a user can get wrong is checked
    here, before a backend is asked to write. Latest values are cached; before the cache
    answers, `_revalidate_cache` lets the backend drop or refresh entries that changed
    elsewhere (another process, the influx CLI), so a cached read is never stale by design.
    Reads "as of" a time always go to the backend: the past can be edited too.
    """

    # Reads of fewer ids than this skip the cache: for a backend whose cache check costs
    # a round trip, reading them outright is as cheap and needs no check.
    direct_read_below = 0

    def __init__(self) -> None:
        self._specs: dict[str, ParameterSpec] = {}
        self._lock = threading.RLock()
        self._cache: dict[str, ParameterValue] = {}

    # -- storage primitives --------------------------------------------------------
    @abstractmethod
    def _write(self, value: ParameterValue, spec: ParameterSpec) -> None: ...

    @abstractmethod
    def _read(self, ids: list[str], at: datetime | None) -> dict[str, ParameterValue]:
        """Latest value at or before ``at`` for each id that has one, in one query."""

    @abstractmethod
    def _read_history(
        self, parameter_id: str, since: datetime | None, until: datetime | None
    ) -> list[ParameterValue]: ...

    def _write_defaults(self, defaults: list[tuple[ParameterValue, ParameterSpec]]) -> list[str]:
        """Write each default whose parameter has no value yet; return the ids written.

        Backends that can do this atomically override it; this version reads then writes.
        """
        stored = self._read([value.id for value, _ in defaults], None)
        created = []
        for value, spec in defaults:
            if value.id not in stored:
                self._write(value, spec)
                created.append(value.id)
        return created

    def change_mark(self) -> Hashable | None:
        return None

    def _revalidate_cache(self) -> None:  # noqa: B027 - a store nobody else writes needs nothing
        """Drop or refresh cached values that changed outside this store object."""

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release connections."""

    # -- protocol --------------------------------------------------------------------
    def declare(self, specs: Iterable[ParameterSpec]) -> list[str]:
        with self._lock:
            incoming = list(specs)
            for spec in incoming:
                known = self._specs.get(spec.id)
                if known is not None and known != spec:
                    raise ParameterError(f"{spec.id}: declared twice with different declarations")
            for spec in incoming:
                self._specs[spec.id] = spec
            if not incoming:
                return []
            now = now_utc()
            defaults = [
                (ParameterValue(id=s.id, value=s.default, timestamp=now, source="default"), s) for s in incoming
            ]
            return self._write_defaults(defaults)

    def specs(self) -> Mapping[str, ParameterSpec]:
        return dict(self._specs)

    def spec(self, parameter_id: str) -> ParameterSpec:
        try:
            return self._specs[parameter_id]
        except KeyError:
            raise ParameterError(f"unknown parameter '{parameter_id}'") from None

    def expand(self, ids_or_namespaces: Iterable[str]) -> list[str]:
        """Declared ids for a mix of ids and namespaces ('qubit' means every 'qubit.*')."""
        wanted: dict[str, None] = {}
        for entry in ids_or_namespaces:
            if entry in self._specs:
                wanted[entry] = None
                continue
            members = [i for i in self._specs if i.startswith(entry + ".")]
            if not members:
                raise ParameterError(f"unknown parameter '{entry}'")
            wanted.update(dict.fromkeys(members))
        return list(wanted)

    def get(self, parameter_id: str, at: datetime | None = None) -> ParameterValue:
        self.spec(parameter_id)
        return self.snapshot([parameter_id], at)[parameter_id]

    def snapshot(
        self, ids: Iterable[str], at: datetime | None = None, *, latest: Iterable[str] = ()
    ) -> dict[str, ParameterValue]:
        at_latest = self.expand(latest)
        wanted = list(dict.fromkeys([*self.expand(ids), *at_latest]))
        current = set(wanted) if at is None else set(at_latest)
        then = [i for i in wanted if i not in current]
        with self._lock:
            found = self._read(then, utc(at)) if then and at is not None else {}
            found.update(self._latest([i for i in wanted if i in current]))
        absent = [i for i in wanted if i not in found]
        if absent:
            when = f" at {at.isoformat()}" if at and absent[0] not in current else ""
            raise ParameterError(f"parameter '{absent[0]}' has no value{when}")
        return {i: found[i] for i in wanted}

    def _latest(self, wanted: list[str]) -> dict[str, ParameterValue]:
        """Latest values through the cache (call with the lock held)."""
        if not wanted:
            return {}
        if len(wanted) < self.direct_read_below:
            found = self._read(wanted, None)
            self._cache.update(found)
            return found
        self._revalidate_cache()
        found = {i: self._cache[i] for i in wanted if i in self._cache}
        missing = [i for i in wanted if i not in found]
        if missing:
            fresh = self._read(missing, None)
            self._cache.update(fresh)
            found.update(fresh)
        return found

    def set(self, parameter_id: str, value: Any, source: str) -> ParameterValue:
        spec = self.spec(parameter_id)
        checked = spec.validate_value(value)
        entry = ParameterValue(id=parameter_id, value=checked, timestamp=now_utc(), source=source)
        with self._lock:
            self._write(entry, spec)
            self._offer(entry)
        return entry

    def history(
        self, parameter_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[ParameterValue]:
        self.spec(parameter_id)
        if since is not None and until is not None and utc(since) > utc(until):
            raise ParameterError(f"history of {parameter_id}: since {since.isoformat()} is after until")
        return self._read_history(parameter_id, utc(since) if since else None, utc(until) if until else None)

    def invalidate(self, ids: Iterable[str] | None = None) -> None:
        with self._lock:
            if ids is None:
                self._cache.clear()
            else:
                for parameter_id in ids:
                    self._cache.pop(parameter_id, None)

    # -- for backends ----------------------------------------------------------------
    def _offer(self, value: ParameterValue) -> None:
        """Cache ``value`` if its parameter is cached and it is not older than the entry."""
        cached = self._cache.get(value.id)
        if cached is not None and value.timestamp >= cached.timestamp:
            self._cache[value.id] = value


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_clock_lock = threading.Lock()
_last_micros = 0


def now_utc() -> datetime:
    """The store's clock: UTC, microseconds, strictly increasing within this process.

    Two writes in the same microsecond would otherwise share a timestamp, and InfluxDB
    keeps only the last point of a series at one time.
    """
    global _last_micros
    with _clock_lock:
        micros = max(time.time_ns() // 1000, _last_micros + 1)
        _last_micros = micros
    return from_micros(micros)


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (both backends store this)."""
    return (utc(moment) - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def utc(moment: datetime) -> datetime:
    """Naive times are taken as UTC, the store's clock."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def open_parameter_store(config: OrchestrionConfig) -> ParameterStore:
    """The store the configuration names: InfluxDB when `influx_url` is set, else SQLite.

    An unreachable InfluxDB raises `ParameterStoreUnavailable` here, before anything runs.
    """
    if config.influx_url:
        from ._influx import InfluxParameterStore

        return InfluxParameterStore(
            config.influx_url,
            config.influx_database,
            username=config.influx_username,
            password=config.influx_password,
            token=config.influx_token,
            timeout=config.influx_timeout,
        )
    from ._sqlite import SQLiteParameterStore

    return SQLiteParameterStore(config.home / "parameters.db")
