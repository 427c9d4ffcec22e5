"""Parameters: declarations, the store protocol and its backends, and parameters as signals."""

from typing import TYPE_CHECKING

from orchestrion._lazy import lazy_exports

if TYPE_CHECKING:
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

# Imported when first used (`orchestrion._lazy`): a listing command must not pay for the
# stack behind the names it does not use (issue 16).
_EXPORTS = {
    "._influx": ("InfluxParameterStore", "line_protocol"),
    "._signals": ("ParameterSignalBackend", "parameter_signal"),
    "._spec": ("ParameterSpec", "ParameterType", "ParameterValue", "ParameterValueType"),
    "._sqlite": ("SQLiteParameterStore",),
    "._store": (
        "BaseParameterStore",
        "ParameterStore",
        "ParameterStoreError",
        "ParameterStoreUnavailable",
        "open_parameter_store",
    ),
}
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

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
