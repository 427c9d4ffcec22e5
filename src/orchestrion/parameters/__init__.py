"""Parameters: declarations, the store protocol and its backends, and parameters as signals."""

from ._influx import InfluxParameterStore, line_protocol
from ._signals import ParameterSignalBackend, parameter_signal
from ._spec import ParameterSpec, ParameterType, ParameterValue, ParameterValueType
from ._sqlite import SQLiteParameterStore
from ._store import (
    BaseParameterStore,
    ParameterStore,
    ParameterStoreError,
    ParameterStoreUnavailable,
    open_parameter_store,
)

__all__ = [
    "BaseParameterStore",
    "InfluxParameterStore",
    "ParameterSignalBackend",
    "ParameterSpec",
    "ParameterStore",
    "ParameterStoreError",
    "ParameterStoreUnavailable",
    "ParameterType",
    "ParameterValue",
    "ParameterValueType",
    "SQLiteParameterStore",
    "line_protocol",
    "open_parameter_store",
    "parameter_signal",
]
