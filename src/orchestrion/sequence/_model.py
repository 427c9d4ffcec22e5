"""The JSON pulse-sequence model that pre-processing produces and the sequencer executes.

A sequence is the complete, self-contained description of what the hardware does for
one data point: the operations of one shot, in order, and how many shots to take.
Every field carries its unit in its name's documentation; values are SI (Hz, s, rad).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1


class _Operation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field("", description="Free-text label shown in errors and plots")


class Cool(_Operation):
    """Doppler cooling and optical pumping: prepares the ion in the dark state."""

    op: Literal["cool"] = "cool"
    duration: float = Field(gt=0, le=1.0, description="Cooling time (s)")


class Pulse(_Operation):
    """A coherent drive of the qubit transition."""

    op: Literal["pulse"] = "pulse"
    frequency: float = Field(gt=0, description="Drive frequency (Hz)")
    duration: float = Field(ge=0, le=1.0, description="Pulse length (s)")
    amplitude: float = Field(ge=0, le=1, description="Drive amplitude, fraction of full scale")
    phase: float = Field(0.0, ge=-100.0, le=100.0, description="Drive phase (rad)")


class Wait(_Operation):
    """Free evolution: no drive."""

    op: Literal["wait"] = "wait"
    duration: float = Field(ge=0, le=1.0, description="Wait time (s)")


class Detect(_Operation):
    """State detection: fluorescence photons are counted and thresholded."""

    op: Literal["detect"] = "detect"
    duration: float = Field(gt=0, le=0.1, description="Photon-counting window (s)")
    threshold: int = Field(ge=0, description="A shot is bright when its count exceeds this")


Operation = Annotated[Cool | Pulse | Wait | Detect, Field(discriminator="op")]


class PulseSequence(BaseModel):
    """One data point's program for the sequencer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    shots: int = Field(ge=1, le=100_000, description="Repetitions of the shot at this point")
    operations: tuple[Operation, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ends_with_one_detection(self) -> PulseSequence:
        detections = [i for i, op in enumerate(self.operations) if isinstance(op, Detect)]
        if len(detections) != 1:
            raise ValueError(f"a sequence needs exactly one detect operation, found {len(detections)}")
        if detections[0] != len(self.operations) - 1:
            raise ValueError("the detect operation must be the last operation")
        return self

    @property
    def detection(self) -> Detect:
        last = self.operations[-1]
        assert isinstance(last, Detect)  # guaranteed by the validator
        return last

    @property
    def shot_duration(self) -> float:
        """Wall time of one shot (s)."""
        return sum(op.duration for op in self.operations)

    @property
    def duration(self) -> float:
        """Wall time of all shots (s)."""
        return self.shot_duration * self.shots

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no white space, so equal sequences give equal text."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON: sequences that are the same are stored once."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


class SequenceError(ValueError):
    """A sequence that does not validate; the message names the operation and field."""


def _describe(error: dict[str, Any], data: Any) -> str:
    loc = list(error["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "operations" and isinstance(loc[1], int):
        index = loc[1]
        # The discriminator tag is part of pydantic's location; drop it, name it instead.
        rest = [str(part) for part in loc[3:]] if len(loc) > 2 else []
        op = "?"
        if isinstance(data, dict):
            ops = data.get("operations")
            if isinstance(ops, list | tuple) and index < len(ops) and isinstance(ops[index], dict):
                op = str(ops[index].get("op", "?"))
                label = ops[index].get("label")
                if label:
                    op = f"{op} '{label}'"
        where = f"operation {index} ({op})" + (f", field '{'.'.join(rest)}'" if rest else "")
    elif loc:
        where = f"field '{'.'.join(str(part) for part in loc)}'"
    else:
        where = "sequence"
    return f"{where}: {error['msg']}"


def parse_sequence(data: str | bytes | dict[str, Any]) -> PulseSequence:
    """Validate JSON text or a mapping into a sequence, raising one `SequenceError`."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise SequenceError(f"invalid sequence: not JSON ({exc})") from None
    try:
        return PulseSequence.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise SequenceError(f"invalid sequence: {_describe(dict(first), data)}{suffix}") from None


def as_sequence_error(exc: ValidationError) -> SequenceError:
    """A `SequenceError` for a model built directly (``Pulse(...)``), naming model and field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    return SequenceError(f"invalid sequence: {exc.title.lower()}: field '{field}': {first['msg']}")


def sequence_json_schema() -> dict[str, Any]:
    """The published JSON schema of `PulseSequence`."""
    return PulseSequence.model_json_schema()
