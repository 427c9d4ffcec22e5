"""Analysis of scans: fits with uncertainties."""

from ._fits import (
    FitResult,
    damped_sine,
    fit_lorentzian,
    fit_oscillation,
    fit_spectroscopy,
    lorentzian,
    rabi_lineshape,
)
from ._format import format_with_error
from ._live import LiveFit

__all__ = [
    "FitResult",
    "LiveFit",
    "damped_sine",
    "fit_lorentzian",
    "fit_oscillation",
    "fit_spectroscopy",
    "format_with_error",
    "lorentzian",
    "rabi_lineshape",
]
