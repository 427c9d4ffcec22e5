"""Stored parameters as ophyd-async signals: readable and settable from plans, baseline-ready.

    frequency = parameter_signal(store, "qubit.frequency")
    yield from bps.mv(frequency, 12.6e9)            # validated, stored with source "plan"
    RE(bpp.baseline_wrapper(plan, [frequency]))     # the stored value in every baseline

A reading carries the time the value was set, not the time it was read: a baseline
then says which stored value a run saw.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bluesky.protocols import Reading
from event_model import DataKey, Limits, LimitsRange
from ophyd_async.core import Callback, SignalBackend, SignalRW

from ._spec import ParameterType, ParameterValue, ParameterValueType
from ._store import ParameterStore

_DATATYPES: dict[ParameterType, type[ParameterValueType]] = {
    ParameterType.BOOL: bool,
    ParameterType.INT: int,
    ParameterType.FLOAT: float,
    ParameterType.STR: str,
}
_DTYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


class ParameterSignalBackend(SignalBackend[Any]):
    """Reads a parameter from the store and writes it back through the store's validation.

    Store calls run in a worker thread: a remote store must not block the RunEngine's loop.
    Subscribers are told of values written through this signal; values written elsewhere
    show up on the next read.
    """

    def __init__(self, store: ParameterStore, parameter_id: str, source: str = "plan") -> None:
        spec = store.specs().get(parameter_id)
        if spec is None:
            from orchestrion.errors import ParameterError

            raise ParameterError(f"unknown parameter '{parameter_id}'")
        self.store = store
        self.spec = spec
        self.write_source = source
        self._callback: Callback[Reading[Any]] | None = None
        self._setpoint: ParameterValueType = spec.default
        super().__init__(_DATATYPES.get(spec.type, type(spec.default)))

    def source(self, name: str, read: bool) -> str:
        return f"parameter://{self.spec.id}"

    async def connect(self, timeout: float) -> None:
        # Reaching the store once here turns an unreachable InfluxDB into a connect failure.
        value = await asyncio.wait_for(asyncio.to_thread(self.store.get, self.spec.id), timeout)
        self._setpoint = value.value

    async def put(self, value: Any | None) -> None:
        stored = await asyncio.to_thread(
            self.store.set, self.spec.id, self.spec.default if value is None else value, self.write_source
        )
        self._setpoint = stored.value
        if self._callback is not None:
            self._callback(_reading(stored))

    async def get_datakey(self, source: str) -> DataKey:
        key = DataKey(dtype=_DTYPES[type(self.spec.default)], shape=[], source=source)  # type: ignore[typeddict-item]
        if self.spec.unit:
            key["units"] = self.spec.unit
        if self.spec.minimum is not None or self.spec.maximum is not None:
            key["limits"] = Limits(control=LimitsRange(low=self.spec.minimum, high=self.spec.maximum))
        if self.spec.allowed is not None:
            key["choices"] = [str(choice) for choice in self.spec.allowed]
        return key

    async def _stored(self) -> ParameterValue:
        return await asyncio.to_thread(self.store.get, self.spec.id)

    async def get_reading(self) -> Reading[Any]:
        return _reading(await self._stored())

    async def get_value(self) -> Any:
        return (await self._stored()).value

    async def get_setpoint(self) -> Any:
        return self._setpoint

    def set_callback(self, callback: Callback[Reading[Any]] | None) -> None:
        self._callback = callback
        if callback is not None:
            # The first reading comes from the store: deliver it when it arrives.
            task = asyncio.get_running_loop().create_task(self.get_reading())
            task.add_done_callback(lambda done: self._deliver(callback, done))

    def _deliver(self, callback: Callback[Reading[Any]], done: asyncio.Task[Reading[Any]]) -> None:
        if not done.cancelled() and done.exception() is None and self._callback is callback:
            callback(done.result())


def _reading(value: ParameterValue) -> Reading[Any]:
    return Reading(value=value.value, timestamp=value.timestamp.timestamp(), alarm_severity=0)


def parameter_signal(
    store: ParameterStore, parameter_id: str, *, name: str | None = None, source: str = "plan"
) -> SignalRW[Any]:
    """A signal for a declared parameter: reads the store, writes through its validation.

    ``name`` defaults to the id with dashes ('qubit-frequency'): event data keys take no
    dots. ``source`` is recorded with every value the signal writes.
    """
    return SignalRW(ParameterSignalBackend(store, parameter_id, source), name=name or parameter_id.replace(".", "-"))
