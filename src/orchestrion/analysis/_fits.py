"""Fits of the standard trapped-ion scans, with one-sigma uncertainties."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import curve_fit

logger = logging.getLogger(__name__)
TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class FitResult:
    """Best-fit values and their standard errors, by parameter name."""

    model: str
    values: dict[str, float]
    errors: dict[str, float]

    def flat(self) -> dict[str, float]:
        """{name: value, name_err: error}: the shape stored in runs and files."""
        out: dict[str, float] = {}
        for name, value in self.values.items():
            out[name] = value
            out[f"{name}_err"] = self.errors[name]
        return out


def rabi_lineshape(
    detuning: NDArray[np.float64], center: float, rabi: float, pulse_time: float, contrast: float, offset: float
) -> NDArray[np.float64]:
    """Excitation after a square pulse vs drive detuning (Hz): the Rabi 'sinc squared'."""
    omega = TWO_PI * rabi
    delta = TWO_PI * (detuning - center)
    generalized = np.sqrt(omega**2 + delta**2)
    shape: NDArray[np.float64] = (omega / generalized) ** 2 * np.sin(generalized * pulse_time / 2.0) ** 2
    return offset + contrast * shape


def damped_sine(
    t: NDArray[np.float64], frequency: float, tau: float, contrast: float, offset: float, phase: float
) -> NDArray[np.float64]:
    """Rabi flopping or Ramsey fringes: offset - contrast/2 cos(2 pi f t + phase) e^(-t/tau)."""
    return offset - 0.5 * contrast * np.cos(TWO_PI * frequency * t + phase) * np.exp(-t / tau)


def _fit(
    model_name: str,
    func: Callable[..., NDArray[np.float64]],
    x: ArrayLike,
    y: ArrayLike,
    p0: list[float],
    names: list[str],
    bounds: tuple[list[float], list[float]],
) -> FitResult | None:
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.size < len(p0) + 1:
        logger.warning("%s fit skipped: %d points for %d parameters", model_name, xs.size, len(p0))
        return None
    try:
        popt, pcov = curve_fit(func, xs, ys, p0=p0, bounds=bounds, maxfev=20_000)
    except (RuntimeError, ValueError) as exc:
        logger.warning("%s fit failed: %s", model_name, exc)
        return None
    errors = np.sqrt(np.clip(np.diag(pcov), 0, None))
    if not np.all(np.isfinite(popt)):
        logger.warning("%s fit failed: the best-fit values are not finite", model_name)
        return None
    return FitResult(
        model_name, dict(zip(names, map(float, popt), strict=True)), dict(zip(names, map(float, errors), strict=True))
    )


def fit_spectroscopy(detuning: ArrayLike, bright: ArrayLike, pulse_time: float, rabi_guess: float) -> FitResult | None:
    """Centre (Hz), Rabi frequency (Hz), contrast and offset of a pulsed resonance.

    The Rabi frequency is bounded to a factor of two around ``rabi_guess``: a scan
    narrower than the line cannot tell it apart from the contrast.
    """
    x, y = np.asarray(detuning, float), np.asarray(bright, float)
    if x.size == 0:
        return None
    center0 = float(x[np.argmax(y)])
    span = float(np.ptp(x)) or 1.0

    def model(
        d: NDArray[np.float64], center: float, rabi: float, contrast: float, offset: float
    ) -> NDArray[np.float64]:
        return rabi_lineshape(d, center, rabi, pulse_time, contrast, offset)

    return _fit(
        "rabi_lineshape",
        model,
        x,
        y,
        p0=[center0, rabi_guess, max(float(np.ptp(y)), 0.1), float(np.min(y))],
        names=["center", "rabi_frequency", "contrast", "offset"],
        bounds=([float(x.min()) - span, rabi_guess / 2, 0.0, -0.1], [float(x.max()) + span, rabi_guess * 2, 1.2, 1.0]),
    )


def fit_oscillation(t: ArrayLike, bright: ArrayLike, frequency_guess: float | None = None) -> FitResult | None:
    """Frequency (Hz), decay time (s), contrast, offset and phase of a damped oscillation."""
    x, y = np.asarray(t, float), np.asarray(bright, float)
    if x.size < 6:
        return None
    span = float(np.ptp(x)) or 1.0
    if frequency_guess is None:
        # The strongest non-zero component of the evenly resampled signal.
        grid = np.linspace(x.min(), x.max(), max(64, x.size))
        resampled = np.interp(grid, np.sort(x), y[np.argsort(x)]) - np.mean(y)
        spectrum = np.abs(np.fft.rfft(resampled))
        frequencies = np.fft.rfftfreq(grid.size, d=grid[1] - grid[0])
        frequency_guess = float(frequencies[1 + int(np.argmax(spectrum[1:]))])
    contrast0, offset0 = max(float(np.ptp(y)), 0.1), float(np.mean(y))
    # Start from the phase that matches best: a local fit started half a turn away stalls.
    phase0 = min(
        (k * math.pi / 4 for k in range(-4, 4)),
        key=lambda ph: float(np.sum((damped_sine(x, frequency_guess, 10 * span, contrast0, offset0, ph) - y) ** 2)),
    )
    return _fit(
        "damped_sine",
        damped_sine,
        x,
        y,
        p0=[frequency_guess, 10 * span, contrast0, offset0, phase0],
        names=["frequency", "tau", "contrast", "offset", "phase"],
        bounds=(
            [0.0, span / 100, 0.0, -0.1, -2 * math.pi],
            [frequency_guess * 4 + 1.0, 1e3 * span, 1.2, 1.1, 2 * math.pi],
        ),
    )


def lorentzian(
    x: NDArray[np.float64], center: float, fwhm: float, amplitude: float, offset: float
) -> NDArray[np.float64]:
    """A Lorentzian line: full width at half maximum ``fwhm``, peak ``amplitude`` above ``offset``."""
    half = fwhm / 2.0
    return offset + amplitude * half**2 / ((x - center) ** 2 + half**2)


def fit_lorentzian(x: ArrayLike, y: ArrayLike) -> FitResult | None:
    """Centre, full width at half maximum, amplitude and offset of a resonance line.

    For lines whose shape is not the pulsed "sinc squared" (`fit_spectroscopy`): long
    or saturated probes, lifetime-broadened lines.
    """
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    if xs.size == 0:
        return None
    span = float(np.ptp(xs)) or 1.0
    peak = int(np.argmax(ys))
    return _fit(
        "lorentzian", lorentzian, xs, ys,
        p0=[float(xs[peak]), span / 4, max(float(np.ptp(ys)), 1e-3), float(np.min(ys))],
        names=["center", "fwhm", "amplitude", "offset"],
        bounds=(
            [float(xs.min()) - span, span / 1e4, 0.0, -np.inf],
            [float(xs.max()) + span, 10 * span, np.inf, np.inf],
        ),
    )  # fmt: skip
