"""Scan specifications: parsing, patterns, grids and repetitions."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrion.errors import ScanSpecError
from orchestrion.experiment import Linspace, Scan, ScanAxis, ScanPattern, ScanPoint


def expand_scan(axes: Sequence[ScanAxis], pattern: ScanPattern, repetitions: int = 1, seed: int = 0) -> list[ScanPoint]:
    return list(Scan(tuple(axes), pattern, repetitions, seed).points())


def test_parse_linear_includes_both_ends() -> None:
    axis = ScanAxis.parse("qubit.frequency=-1e3:1e3:5")
    assert axis.id == "qubit.frequency"
    assert axis.values == (-1000.0, -500.0, 0.0, 500.0, 1000.0)
    assert ScanAxis.parse("a.b=3:3:1").values == (3.0,)


def test_parse_explicit_values() -> None:
    assert ScanAxis.parse("ramsey.wait=0,1e-6,5e-6").values == (0.0, 1e-6, 5e-6)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("qubit.frequency", "expected ID=START:STOP:NUM"),
        ("=1:2:3", "expected ID=START:STOP:NUM"),
        ("a.b=1:2", "expected ID=START:STOP:NUM"),
        ("a.b=x:2:3", "START and STOP must be numbers"),
        ("a.b=1:2:2.5", "NUM must be a whole number"),
        ("a.b=1:2:0", "at least 1"),
        ("a.b=1:inf:3", "finite"),
        ("a.b=1,two", "values must be numbers"),
    ],
)
def test_malformed_scans_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ScanSpecError, match=message):
        ScanAxis.parse(text)


def test_grid_is_the_cartesian_product_first_axis_outermost() -> None:
    points = expand_scan([ScanAxis("a.x", (1.0, 2.0)), ScanAxis("a.y", (10.0, 20.0, 30.0))], ScanPattern.LINEAR)
    assert [(p.values["a.x"], p.values["a.y"]) for p in points] == [
        (1, 10),
        (1, 20),
        (1, 30),
        (2, 10),
        (2, 20),
        (2, 30),
    ]
    assert [p.index for p in points] == list(range(6))


def test_centred_starts_in_the_middle_and_alternates() -> None:
    axis = ScanAxis.linear("a.x", -2, 2, 5)
    assert axis.ordered(ScanPattern.CENTRED) == (0.0, -1.0, 1.0, -2.0, 2.0)


def test_repetitions_repeat_the_scan_and_count_up() -> None:
    points = expand_scan([ScanAxis("a.x", (1.0, 2.0))], ScanPattern.LINEAR, repetitions=3)
    assert [p.repetition for p in points] == [0, 0, 1, 1, 2, 2]
    assert [p.values["a.x"] for p in points] == [1, 2, 1, 2, 1, 2]


def test_shuffled_order_depends_on_the_seed_only() -> None:
    axis = [ScanAxis.linear("a.x", 0, 1, 50)]
    first = [p.values["a.x"] for p in expand_scan(axis, ScanPattern.SHUFFLED, seed=3)]
    again = [p.values["a.x"] for p in expand_scan(axis, ScanPattern.SHUFFLED, seed=3)]
    other = [p.values["a.x"] for p in expand_scan(axis, ScanPattern.SHUFFLED, seed=4)]
    assert first == again
    assert first != other
    assert first != sorted(first)


def test_no_axes_is_one_point_per_repetition() -> None:
    points = expand_scan([], ScanPattern.LINEAR, repetitions=4)
    assert len(points) == 4
    assert all(p.values == {} for p in points)


def test_the_same_parameter_cannot_be_scanned_twice() -> None:
    with pytest.raises(ScanSpecError, match="scanned twice"):
        expand_scan([ScanAxis("a.x", (1.0,)), ScanAxis("a.x", (2.0,))], ScanPattern.LINEAR)


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=3),
    pattern=st.sampled_from(list(ScanPattern)),
    repetitions=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_every_pattern_visits_each_grid_point_once_per_repetition(
    sizes: list[int], pattern: ScanPattern, repetitions: int, seed: int
) -> None:
    axes = [ScanAxis.linear(f"a.p{i}", 0, n - 1, n) for i, n in enumerate(sizes)]
    points = expand_scan(axes, pattern, repetitions, seed)
    linear = expand_scan(axes, ScanPattern.LINEAR)
    grid = sorted(tuple(p.values.values()) for p in linear)
    for repetition in range(repetitions):
        visited = sorted(tuple(p.values.values()) for p in points if p.repetition == repetition)
        assert visited == grid
    assert [p.index for p in points] == list(range(len(points)))


@given(
    start=st.floats(min_value=-1e9, max_value=1e9),
    stop=st.floats(min_value=-1e9, max_value=1e9),
    num=st.integers(min_value=1, max_value=300),
)
def test_a_linspace_gives_numpys_values_exactly(start: float, stop: float, num: int) -> None:
    values = Linspace(start, stop, num)
    expected = [float(v) for v in np.linspace(start, stop, num)]
    assert list(values) == expected
    assert [values[i] for i in range(-num, num)] == expected * 2
    assert values == tuple(expected)
    assert values[1:3] == tuple(expected[1:3])


def test_a_huge_axis_costs_nothing_until_visited() -> None:
    tracemalloc.start()
    try:
        axis = ScanAxis.parse("a.x=0:1:2000000")
        scan = Scan((axis,), ScanPattern.LINEAR, repetitions=10**9)
        first = list(itertools.islice(scan.points(), 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(axis) == 2_000_000
    assert scan.num_points == 2_000_000 * 10**9
    assert [p.values["a.x"] for p in first] == [0.0, 1 / 1_999_999, 2 / 1_999_999]
    assert peak < 1_000_000  # bytes: the values are made as they are visited
    assert axis.spec_text() == "a.x=0:1:2000000"


def _points_as_they_were(axes: Sequence[ScanAxis], pattern: ScanPattern, repetitions: int, seed: int) -> list[Any]:
    """How scans were expanded before points were streamed: a list of the whole grid."""
    rng = np.random.default_rng(seed)
    grid = list(itertools.product(*(axis.ordered(pattern) for axis in axes)))
    points = []
    for repetition in range(repetitions):
        order = rng.permutation(len(grid)) if pattern is ScanPattern.SHUFFLED else range(len(grid))
        points.extend((repetition, grid[i]) for i in order)
    return points


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=0, max_size=3),
    pattern=st.sampled_from(list(ScanPattern)),
    repetitions=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_streamed_points_keep_the_order_that_recorded_seeds_stand_for(
    sizes: list[int], pattern: ScanPattern, repetitions: int, seed: int
) -> None:
    axes = [ScanAxis.linear(f"a.p{i}", -1, n, n) for i, n in enumerate(sizes)]
    points = expand_scan(axes, pattern, repetitions, seed)
    assert [(p.repetition, tuple(p.values.values())) for p in points] == _points_as_they_were(
        axes, pattern, repetitions, seed
    )
    assert expand_scan(axes, pattern, repetitions, seed) == points  # the same on every pass
