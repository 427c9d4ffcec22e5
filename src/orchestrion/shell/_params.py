"""`params` in a session: the parameter store as a dictionary with history."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from orchestrion.identity import current_user
from orchestrion.parameters import ParameterStore, ParameterValue, ParameterValueType
from orchestrion.times import parse_time


class ParameterView(Mapping[str, ParameterValueType]):
    """Read-only parameters as they were at one time: ``params.at("2026-11-21T09:00")``."""

    def __init__(self, store: ParameterStore, at: datetime | None) -> None:
        self._store = store
        self._at = at

    def __getitem__(self, parameter_id: str) -> ParameterValueType:
        return self._store.get(parameter_id, at=self._at).value

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._store.specs()))

    def __len__(self) -> int:
        return len(self._store.specs())

    def _ipython_key_completions_(self) -> list[str]:
        return sorted(self._store.specs())

    def entries(self) -> dict[str, ParameterValue]:
        """Every parameter's value with its timestamp and source, in one read."""
        return self._store.snapshot(sorted(self._store.specs()), at=self._at)

    def __repr__(self) -> str:
        when = f" at {self._at.isoformat()}" if self._at else ""
        lines = [f"Parameters{when}:"]
        specs = self._store.specs()
        for parameter_id, entry in self.entries().items():
            unit = specs[parameter_id].unit
            lines.append(f"  {parameter_id:40} {entry.value!r} {unit}".rstrip())
        return "\n".join(lines)


class ParameterBrowser(ParameterView):
    """``params["qubit.frequency"]``, ``params["qubit.frequency"] = 12.6428e9``,
    ``params.history("qubit.frequency")``, ``params.at(time)``; tab completion on ids."""

    def __init__(self, store: ParameterStore, source: str | None = None) -> None:
        super().__init__(store, None)
        self._source = source or f"shell:{current_user()}"

    def __setitem__(self, parameter_id: str, value: Any) -> None:
        self._store.set(parameter_id, value, source=self._source)

    def history(
        self, parameter_id: str, since: datetime | str | None = None, until: datetime | str | None = None
    ) -> list[ParameterValue]:
        return self._store.history(
            parameter_id,
            parse_time(since) if since is not None else None,
            parse_time(until) if until is not None else None,
        )

    def at(self, moment: datetime | str) -> ParameterView:
        return ParameterView(self._store, parse_time(moment))

    def info(self, parameter_id: str) -> dict[str, Any]:
        """The declaration of a parameter: type, unit, bounds, description."""
        spec = self._store.specs().get(parameter_id)
        if spec is None:
            from orchestrion.errors import ParameterError

            raise ParameterError(f"unknown parameter '{parameter_id}'")
        return spec.model_dump(mode="json")
