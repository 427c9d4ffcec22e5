"""Scan specifications and the points they visit, generated as the run goes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import overload

import numpy as np

from orchestrion.errors import ScanSpecError, did_you_mean, quoted


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
            names = [p.value for p in cls]
            raise ScanSpecError(
                f"unknown scan pattern {quoted(text)}{did_you_mean(text, names)} (choose from {', '.join(names)})"
            ) from None


class Linspace(Sequence[float]):
    """``numpy.linspace(start, stop, num)``, value for value, without holding the values.

    An axis of a hundred million points costs nothing until it is visited, so a request
    that large can be measured against the run limits and refused before anything grows.
    """

    __slots__ = ("num", "start", "stop")

    def __init__(self, start: float, stop: float, num: int) -> None:
        if num < 1:
            raise ValueError(f"a linspace needs at least 1 value, not {num}")
        self.start, self.stop, self.num = float(start), float(stop), int(num)

    def _at(self, i: int) -> float:
        # numpy's own arithmetic: i * step + start, the last value exactly stop.
        if self.num == 1:
            return self.start
        if i == self.num - 1:
            return self.stop
        div = self.num - 1
        delta = self.stop - self.start
        step = delta / div
        return i / div * delta + self.start if step == 0 else i * step + self.start

    def __len__(self) -> int:
        return self.num

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[float, ...]: ...

    def __getitem__(self, index: int | slice) -> float | tuple[float, ...]:
        if isinstance(index, slice):
            return tuple(self._at(i) for i in range(*index.indices(self.num)))
        i = index + self.num if index < 0 else index
        if not 0 <= i < self.num:
            raise IndexError(f"index {index} is outside a linspace of {self.num}")
        return self._at(i)

    def __iter__(self) -> Iterator[float]:
        return (self._at(i) for i in range(self.num))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Linspace):
            return (self.start, self.stop, self.num) == (other.start, other.stop, other.num)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == self.num and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.start, self.stop, self.num))

    def __repr__(self) -> str:
        return f"Linspace({self.start!r}, {self.stop!r}, {self.num})"


@dataclass(frozen=True)
class ScanAxis:
    """One scanned parameter: a stored parameter id or a device parameter such as 'rf.frequency'.

    ``values`` is a tuple of the given values, or a `Linspace` for 'ID=START:STOP:NUM'.
    """

    id: str
    values: Sequence[float]

    def __post_init__(self) -> None:
        if not isinstance(self.values, Linspace):
            object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if not self.values:
            raise ScanSpecError(f"scan '{self.id}': no values")

    @classmethod
    def linear(cls, parameter_id: str, start: float, stop: float, num: int) -> ScanAxis:
        if num < 1:
            raise ScanSpecError(f"scan '{parameter_id}': the number of points must be at least 1, not {num}")
        return cls(parameter_id, Linspace(start, stop, num))

    @classmethod
    def parse(cls, text: str) -> ScanAxis:
        """Parse 'ID=START:STOP:NUM' (NUM points, both ends included) or 'ID=V1,V2,...'."""
        parameter_id, sep, spec = text.partition("=")
        shown = quoted(text)
        parameter_id = parameter_id.strip()
        if not sep or not parameter_id or not spec.strip():
            raise ScanSpecError(f"scan {shown}: expected ID=START:STOP:NUM or ID=V1,V2,...")
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) != 3:
                raise ScanSpecError(f"scan {shown}: expected ID=START:STOP:NUM")
            try:
                start, stop = float(parts[0]), float(parts[1])
            except ValueError:
                raise ScanSpecError(f"scan {shown}: START and STOP must be numbers") from None
            try:
                num = int(parts[2])
            except ValueError:
                raise ScanSpecError(f"scan {shown}: NUM must be a whole number") from None
            if not (math.isfinite(start) and math.isfinite(stop)):
                raise ScanSpecError(f"scan {shown}: START and STOP must be finite")
            return cls.linear(parameter_id, start, stop, num)
        try:
            values = tuple(float(v) for v in spec.split(","))
        except ValueError:
            raise ScanSpecError(f"scan {shown}: values must be numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise ScanSpecError(f"scan {shown}: values must be finite")
        return cls(parameter_id, values)

    def __str__(self) -> str:
        return self.spec_text()

    def __len__(self) -> int:
        return len(self.values)

    def spec_text(self) -> str:
        """The axis as a user types it: 'ID=START:STOP:NUM' when evenly spaced, else 'ID=V1,V2,...'."""
        values = self.values
        if isinstance(values, Linspace) and values.num >= 2:
            return f"{self.id}={values.start:g}:{values.stop:g}:{values.num}"
        if len(values) >= 2:
            even = np.linspace(values[0], values[-1], len(values))
            if np.allclose(values, even, rtol=0, atol=1e-12 * max(1.0, *map(abs, values))):
                return f"{self.id}={values[0]:g}:{values[-1]:g}:{len(values)}"
        return f"{self.id}={','.join(f'{v:g}' for v in values)}"

    def ordered(self, pattern: ScanPattern) -> Sequence[float]:
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


@dataclass(frozen=True)
class Scan:
    """The points of a run: the axes' grid (first axis outermost) in a pattern, repeated.

    Points are made as they are asked for: a run holds at most one repetition's order
    (the shuffled pattern's permutation), never the list of its points, while
    `num_points` is known at once.  With no axes, each repetition is one point (a
    'count').  The same scan yields the same points every time it is iterated: the
    shuffled order depends on the seed only.
    """

    axes: tuple[ScanAxis, ...]
    pattern: ScanPattern = ScanPattern.LINEAR
    repetitions: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(self.axes))
        if self.repetitions < 1:
            raise ScanSpecError(f"repetitions must be at least 1, not {self.repetitions}")
        ids = [axis.id for axis in self.axes]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise ScanSpecError(f"parameter '{duplicate}' is scanned twice")

    @property
    def grid_size(self) -> int:
        """Points per repetition."""
        return math.prod(len(axis) for axis in self.axes)

    @property
    def num_points(self) -> int:
        return self.grid_size * self.repetitions

    def corners(self) -> Iterable[Mapping[str, float]]:
        """The grid's first and last point (each axis at its first and at its last value)."""
        first = {axis.id: axis.values[0] for axis in self.axes}
        last = {axis.id: axis.values[-1] for axis in self.axes}
        return (first,) if first == last else (first, last)

    def points(self) -> Iterator[ScanPoint]:
        """Every point of the run, in order, made one at a time."""
        ids = [axis.id for axis in self.axes]
        ordered = [axis.ordered(self.pattern) for axis in self.axes]
        sizes = [len(values) for values in ordered]
        size = self.grid_size
        rng = np.random.default_rng(self.seed)
        index = 0
        for repetition in range(self.repetitions):
            order: Iterable[int] = (
                (int(i) for i in rng.permutation(size)) if self.pattern is ScanPattern.SHUFFLED else range(size)
            )
            for flat in order:
                yield ScanPoint(index, repetition, dict(zip(ids, _grid_values(ordered, sizes, flat), strict=True)))
                index += 1


def _grid_values(ordered: Sequence[Sequence[float]], sizes: Sequence[int], flat: int) -> list[float]:
    """The values of grid point ``flat`` (the last axis varies fastest, as in itertools.product)."""
    values = [0.0] * len(ordered)
    for axis in range(len(ordered) - 1, -1, -1):
        flat, i = divmod(flat, sizes[axis])
        values[axis] = ordered[axis][i]
    return values
