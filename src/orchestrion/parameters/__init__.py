"""Parameters: declarations, the store protocol and its backends."""

from ._spec import ParameterSpec, ParameterType, ParameterValue, ParameterValueType
from ._store import BaseParameterStore, MemoryParameterStore, ParameterStore, open_parameter_store

__all__ = [
    "BaseParameterStore",
    "MemoryParameterStore",
    "ParameterSpec",
    "ParameterStore",
    "ParameterType",
    "ParameterValue",
    "ParameterValueType",
    "open_parameter_store",
]
