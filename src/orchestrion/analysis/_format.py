"""Fit results as a physicist writes them: the value rounded to its uncertainty."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

ERROR_SUFFIX = "_err"


def format_with_error(value: float, error: float | None) -> str:
    """``value ± error`` with the error to two significant digits and the value to the same place.

    ``12642816365.97 ± 470`` reads ``12642816370 ± 470``; without a usable error the value
    keeps six significant digits.
    """
    if error is None or not math.isfinite(error) or error <= 0 or not math.isfinite(value):
        return f"{value:.6g}"
    place = math.floor(math.log10(error)) - 1  # the decimal place of the error's second digit
    decimals = max(0, -place)
    rounded_value = round(value, -place)
    rounded_error = round(error, -place)
    return f"{rounded_value:.{decimals}f} ± {rounded_error:.{decimals}f}"


def fit_lines(analysis: Mapping[str, float]) -> Iterator[tuple[str, str]]:
    """(name, "value ± error") for each fit result of a run's analysis (errors paired, not listed)."""
    for key, value in analysis.items():
        if not key.endswith(ERROR_SUFFIX):
            yield key, format_with_error(value, analysis.get(f"{key}{ERROR_SUFFIX}"))
