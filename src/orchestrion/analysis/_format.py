"""Fit results as a physicist writes them: the value rounded to its uncertainty."""

from __future__ import annotations

import math


def format_with_error(value: float, error: float | None) -> str:
    """``value ± error`` with the error to two significant digits and the value to match.

    ``12642.8123 ± 12.34`` -> ``12643 ± 12``; ``48640.2 ± 2862`` -> ``48600 ± 2900``;
    ``0.0512 ± 1.8`` -> ``0.1 ± 1.8``; large or small values in scientific notation:
    ``12642812345.6 ± 123`` -> ``1.264281235e+10 ± 1.2e+02``.
    Without a usable error, six significant digits.
    """
    if error is None or not math.isfinite(error) or error <= 0 or not math.isfinite(value):
        return f"{value:.6g}" if error is None else f"{value:.6g} ± {error:.2g}"
    first = math.floor(math.log10(error))  # the error's leading digit
    magnitude = math.floor(math.log10(abs(value))) if value else first
    if magnitude >= 6 or magnitude < -3:
        digits = max(magnitude - first + 1, 0)
        return f"{value:.{digits}e} ± {error:.1e}"
    ndigits = 1 - first  # negative: rounded to tens, hundreds, ...
    decimals = max(ndigits, 0)
    return f"{round(value, ndigits):.{decimals}f} ± {round(error, ndigits):.{decimals}f}"
