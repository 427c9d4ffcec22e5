"""Analysis of scans: fits with uncertainties."""

from ._fits import FitResult, damped_sine, fit_oscillation, fit_spectroscopy, rabi_lineshape

__all__ = ["FitResult", "damped_sine", "fit_oscillation", "fit_spectroscopy", "rabi_lineshape"]
