"""Analysis of scans: fits with uncertainties."""

from typing import TYPE_CHECKING

from orchestrion._lazy import lazy_exports

if TYPE_CHECKING:
    from ._fits import (
        FitResult,
        damped_sine,
        fit_lorentzian,
        fit_oscillation,
        fit_spectroscopy,
        lorentzian,
        rabi_lineshape,
    )
    from ._format import fit_lines, format_with_error
    from ._live import LiveFit

# Imported when first used (`orchestrion._lazy`): a listing command must not pay for the
# stack behind the names it does not use (issue 16).
_EXPORTS = {
    "._fits": (
        "FitResult",
        "damped_sine",
        "fit_lorentzian",
        "fit_oscillation",
        "fit_spectroscopy",
        "lorentzian",
        "rabi_lineshape",
    ),
    "._format": ("fit_lines", "format_with_error"),
    "._live": ("LiveFit",),
}
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "FitResult",
    "LiveFit",
    "damped_sine",
    "fit_lines",
    "fit_lorentzian",
    "fit_oscillation",
    "fit_spectroscopy",
    "format_with_error",
    "lorentzian",
    "rabi_lineshape",
]
