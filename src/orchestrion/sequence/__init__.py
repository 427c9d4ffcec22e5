"""JSON pulse sequences: what pre-processing compiles and the sequencer executes."""

from ._model import (
    SCHEMA_VERSION,
    Cool,
    Detect,
    Operation,
    Pulse,
    PulseSequence,
    SequenceError,
    Wait,
    as_sequence_error,
    parse_sequence,
    sequence_json_schema,
)

__all__ = [
    "SCHEMA_VERSION",
    "Cool",
    "Detect",
    "Operation",
    "Pulse",
    "PulseSequence",
    "SequenceError",
    "Wait",
    "as_sequence_error",
    "parse_sequence",
    "sequence_json_schema",
]
