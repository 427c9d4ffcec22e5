"""Scan specifications and their expansion into data points."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from orchestrion.errors import ScanSpecError


class ScanPattern(StrEnum):
    """The order in which a scan visits its values."""

    LINEAR = "linear"
    """From start to stop."""
    SHUFFLED = "shuffled"
    """A random order, new for every repetition: slow drifts do not alias onto the axis."""
    CENTRED = "centred"
    """From the centre outwards, alternating sides: the interesting middle comes first."""

    @classmethod
    def parse(cls, text: str) -> ScanPattern:
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise ScanSpecError(f"unknown scan pattern '{text}' (choose from {choices})") from None


@dataclass(frozen=True)
class ScanAxis:
    """One scanned parameter: a stored parameter id or a device parameter such as 'rf.frequency'."""

    id: str
    values: tuple[float, ...]

    @classmethod
    def linear(cls, parameter_id: str, start: float, stop: float, num: int) -> ScanAxis:
        if num < 1:
            raise ScanSpecError(f"scan '{parameter_id}': the number of points must be at least 1, not {num}")
        return cls(parameter_id, tuple(float(v) for v in np.linspace(start, stop, num)))

    @classmethod
    def parse(cls, text: str) -> ScanAxis:
        """Parse 'ID=START:STOP:NUM' (NUM points, both ends included) or 'ID=V1,V2,...'."""
        parameter_id, sep, spec = text.partition("=")
        parameter_id = parameter_id.strip()
        if not sep or not parameter_id or not spec.strip():
            raise ScanSpecError(f"scan '{text}': expected ID=START:STOP:NUM or ID=V1,V2,...")
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) != 3:
                raise ScanSpecError(f"scan '{text}': expected ID=START:STOP:NUM")
            try:
                start, stop = float(parts[0]), float(parts[1])
            except ValueError:
                raise ScanSpecError(f"scan '{text}': START and STOP must be numbers") from None
            try:
                num = int(parts[2])
            except ValueError:
                raise ScanSpecError(f"scan '{text}': NUM must be a whole number") from None
            if not (math.isfinite(start) and math.isfinite(stop)):
                raise ScanSpecError(f"scan '{text}': START and STOP must be finite")
            return cls.linear(parameter_id, start, stop, num)
        try:
            values = tuple(float(v) for v in spec.split(","))
        except ValueError:
            raise ScanSpecError(f"scan '{text}': values must be numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise ScanSpecError(f"scan '{text}': values must be finite")
        return cls(parameter_id, values)

    def __str__(self) -> str:
        return self.spec_text()

    def spec_text(self) -> str:
        """The axis as a user types it: 'ID=START:STOP:NUM' when evenly spaced, else 'ID=V1,V2,...'."""
        values = self.values
        if len(values) >= 2:
            even = np.linspace(values[0], values[-1], len(values))
            if np.allclose(values, even, rtol=0, atol=1e-12 * max(1.0, *map(abs, values))):
                return f"{self.id}={values[0]:g}:{values[-1]:g}:{len(values)}"
        return f"{self.id}={','.join(f'{v:g}' for v in values)}"

    def ordered(self, pattern: ScanPattern) -> tuple[float, ...]:
        if pattern is not ScanPattern.CENTRED:
            return self.values
        centre = (min(self.values) + max(self.values)) / 2.0
        # Closest to the centre first; at equal distance, below before above.
        return tuple(sorted(self.values, key=lambda v: (round(abs(v - centre), 12), v > centre)))


@dataclass(frozen=True)
class ScanPoint:
    """One data point: its position in the run, its repetition and the scanned values."""

    index: int
    repetition: int
    values: Mapping[str, float]


def expand_scan(axes: Sequence[ScanAxis], pattern: ScanPattern, repetitions: int = 1, seed: int = 0) -> list[ScanPoint]:
    """The Cartesian product of the axes (first axis outermost), repeated.

    With no axes, each repetition is one point (a 'count').
    """
    if repetitions < 1:
        raise ScanSpecError(f"repetitions must be at least 1, not {repetitions}")
    ids = [axis.id for axis in axes]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ScanSpecError(f"parameter '{duplicate}' is scanned twice")
    rng = np.random.default_rng(seed)
    grid = list(itertools.product(*(axis.ordered(pattern) for axis in axes)))
    points: list[ScanPoint] = []
    for repetition in range(repetitions):
        order = rng.permutation(len(grid)) if pattern is ScanPattern.SHUFFLED else range(len(grid))
        for i in order:
            points.append(ScanPoint(len(points), repetition, dict(zip(ids, grid[i], strict=True))))
    return points
