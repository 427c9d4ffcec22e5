"""Declarations of parameters: what experiments read, with types, units and bounds."""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrion.errors import ParameterError

ParameterValueType = bool | int | float | str

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ID = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class ParameterType(StrEnum):
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STR = "str"
    ENUM = "enum"


class ParameterSpec(BaseModel):
    """A parameter's declaration: an experiment's promise of what it reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Dotted id, namespace first: 'qubit.frequency'")
    type: ParameterType
    default: ParameterValueType
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[ParameterValueType, ...] | None = Field(None, description="Allowed values (enum)")
    description: str = ""
    group: str = Field("", description="Display group in clients")

    @field_validator("id")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"parameter id '{value}' must be dotted lower-case words, like 'qubit.frequency'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ParameterSpec:
        if self.type is ParameterType.ENUM and not self.allowed:
            raise ValueError(f"enum parameter '{self.id}' needs allowed values")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"parameter '{self.id}': minimum {self.minimum} > maximum {self.maximum}")
        object.__setattr__(self, "default", self.validate_value(self.default))
        return self

    @property
    def namespace(self) -> str:
        return self.id.rsplit(".", 1)[0]

    @property
    def name(self) -> str:
        return self.id.rsplit(".", 1)[1]

    def validate_value(self, value: Any) -> ParameterValueType:
        """The value coerced to this parameter's type, or a `ParameterError` naming it."""
        checked = self._coerce(value)
        if isinstance(checked, int | float) and not isinstance(checked, bool):
            if self.minimum is not None and checked < self.minimum:
                raise ParameterError(
                    f"{self.id}: {checked!r} is below the minimum {self.minimum:g} {self.unit}".rstrip()
                )
            if self.maximum is not None and checked > self.maximum:
                raise ParameterError(
                    f"{self.id}: {checked!r} is above the maximum {self.maximum:g} {self.unit}".rstrip()
                )
        if self.allowed is not None and checked not in self.allowed:
            choices = ", ".join(repr(a) for a in self.allowed)
            raise ParameterError(f"{self.id}: {checked!r} is not one of {choices}")
        return checked

    def parse_text(self, text: str) -> ParameterValueType:
        """Parse a value typed on a command line ('1e6', 'true', 'hello')."""
        if self.type is ParameterType.BOOL:
            lowered = text.strip().lower()
            if lowered in {"true", "1", "yes", "on"}:
                return self.validate_value(True)
            if lowered in {"false", "0", "no", "off"}:
                return self.validate_value(False)
            raise ParameterError(f"{self.id}: '{text}' is not a boolean (true or false)")
        if self.type in (ParameterType.INT, ParameterType.FLOAT):
            try:
                number: int | float = int(text) if self.type is ParameterType.INT else float(text)
            except ValueError:
                raise ParameterError(
                    f"{self.id}: '{text}' is not {'an integer' if self.type is ParameterType.INT else 'a number'}"
                ) from None
            return self.validate_value(number)
        if self.type is ParameterType.ENUM and self.allowed and not all(isinstance(a, str) for a in self.allowed):
            for candidate in self.allowed:
                if str(candidate) == text:
                    return candidate
        return self.validate_value(text)

    def _coerce(self, value: Any) -> ParameterValueType:
        kind = self.type
        if kind is ParameterType.BOOL:
            if isinstance(value, bool):
                return value
        elif kind is ParameterType.INT:
            number: int | None = None
            if isinstance(value, int) and not isinstance(value, bool):
                number = value
            elif isinstance(value, float) and value.is_integer():
                number = int(value)
            if number is not None:
                # Stores keep 64-bit integers (InfluxDB, SQLite): larger ones cannot round-trip.
                if not _INT64_MIN <= number <= _INT64_MAX:
                    raise ParameterError(f"{self.id}: {number!r} is outside the 64-bit integer range")
                return number
        elif kind is ParameterType.FLOAT:
            if isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise ParameterError(f"{self.id}: {value!r} is not a finite number")
                return float(value)
        elif kind is ParameterType.STR:
            if isinstance(value, str):
                return value
        elif isinstance(value, bool | int | float | str):  # enum: membership is checked after
            return value
        raise ParameterError(f"{self.id}: {value!r} is not of type {kind.value}")


class ParameterValue(BaseModel):
    """A parameter's value at a point in its history."""

    model_config = ConfigDict(frozen=True)

    id: str
    value: ParameterValueType
    timestamp: datetime = Field(description="When the value was set (UTC)")
    source: str = Field("", description="Who or what set it: a user, an experiment, 'default'")

    def entry(self, unit: str = "") -> dict[str, Any]:
        """The value as the CLI's and the API's JSON show it: id, value, unit, timestamp, source."""
        return {
            "id": self.id,
            "value": self.value,
            "unit": unit,
            "timestamp": self.timestamp.isoformat(),
            "source": self.source,
        }
