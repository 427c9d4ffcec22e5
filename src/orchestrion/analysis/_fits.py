"""Fits of the standard trapped-ion scans, with one-sigma uncertainties."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:  # lmfit (and scipy) are imported by the fits that use them: seconds of start-up
    from lmfit import Parameters

logger = logging.getLogger(__name__)
TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class FitResult:
    """Best-fit values and their standard errors, by parameter name.

    Only what the data determined is in ``values``: parameters held at a known value
    (the Rabi frequency a pulse implies, no decay within the scan) are in ``fixed``.
    ``converged`` is False when the optimiser failed, gave no uncertainties, or left a
    free parameter on its bound; ``message`` then says which.
    """

    model: str
    values: dict[str, float]
    errors: dict[str, float]
    fixed: dict[str, float] = field(default_factory=dict)
    converged: bool = True
    message: str = ""

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
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    params: Parameters,
) -> FitResult | None:
    """Least squares with lmfit; None when there are too few points to determine the free ones."""
    free = [name for name, par in params.items() if par.vary]
    if x.size < len(free) + 1:
        logger.info("%s fit skipped: %d points for %d free parameters", model_name, x.size, len(free))
        return None
    from lmfit import Model

    model = Model(func, independent_vars=[next(iter(inspect.signature(func).parameters))])
    try:
        result = model.fit(y, params, **{model.independent_vars[0]: x})
    except (ValueError, TypeError) as exc:
        logger.warning("%s fit failed: %s", model_name, exc)
        return FitResult(model_name, {}, {}, converged=False, message=f"the optimiser failed: {exc}")
    values = {name: float(result.params[name].value) for name in free}
    errors = {name: float(result.params[name].stderr or math.nan) for name in free}
    fixed = {name: float(par.value) for name, par in result.params.items() if not par.vary and not par.expr}
    problems: list[str] = []
    if not result.success:
        problems.append(result.message)
    if not result.errorbars or not all(math.isfinite(e) for e in errors.values()):
        problems.append("no uncertainties (the free parameters are not all determined by the data)")
    for name in free:
        par = result.params[name]
        span = (par.max - par.min) if math.isfinite(par.max - par.min) else max(abs(par.value), 1.0)
        if min(abs(par.value - par.min), abs(par.max - par.value)) <= 1e-6 * span:
            problems.append(f"{name} is on its bound ({par.value:.6g})")
    if not all(math.isfinite(v) for v in values.values()):
        problems.append("non-finite values")
    return FitResult(model_name, values, errors, fixed, converged=not problems, message="; ".join(problems))


def fit_spectroscopy(
    detuning: ArrayLike, bright: ArrayLike, pulse_time: float, rabi_frequency: float
) -> FitResult | None:
    """Centre (Hz), contrast and offset of a pulsed resonance.

    The Rabi frequency is that of the drive (``rabi_frequency``, from the stored pulse
    parameters) and is held, not fitted: across a scan of the line it trades off against
    the contrast, and the two cannot both be determined.
    """
    x, y = np.asarray(detuning, float), np.asarray(bright, float)
    if x.size == 0:
        return None
    span = float(np.ptp(x)) or 1.0

    def model(d: NDArray[np.float64], center: float, contrast: float, offset: float) -> NDArray[np.float64]:
        return rabi_lineshape(d, center, rabi_frequency, pulse_time, contrast, offset)

    from lmfit import Parameters

    params = Parameters()
    params.add("center", value=float(x[np.argmax(y)]), min=float(x.min()) - span, max=float(x.max()) + span)
    # A bright fraction: the line's peak lies between 0 and 1 (a little margin for noise).
    params.add("contrast", value=min(max(float(np.ptp(y)), 0.1), 1.0), min=0.0, max=1.5)
    params.add("offset", value=float(np.min(y)), min=-0.5, max=1.0)
    fit = _fit("rabi_lineshape", model, x, y, params)
    if fit is not None:
        fit.fixed["rabi_frequency"] = rabi_frequency
    return fit


def fit_oscillation(t: ArrayLike, bright: ArrayLike, frequency_guess: float | None = None) -> FitResult | None:
    """Frequency (Hz), contrast, offset and phase of an oscillation, and its decay time (s)
    when the scan shows one.

    A decay much slower than the scan leaves ``tau`` undetermined (its error exceeds half
    its value, or it runs to its bound): the oscillation is then refitted without decay
    and ``tau`` is not reported.
    """
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
    contrast0, offset0 = min(max(float(np.ptp(y)), 0.1), 1.0), float(np.mean(y))
    # Start from the phase that matches best: a local fit started half a turn away stalls.
    phase0 = min(
        (k * math.pi / 4 for k in range(-4, 4)),
        key=lambda ph: float(np.sum((damped_sine(x, frequency_guess, 10 * span, contrast0, offset0, ph) - y) ** 2)),
    )

    def parameters(decays: bool) -> Parameters:
        from lmfit import Parameters

        params = Parameters()
        params.add("frequency", value=frequency_guess, min=0.0, max=frequency_guess * 4 + 1.0)
        params.add("tau", value=3 * span if decays else math.inf, min=span / 100, max=1e3 * span, vary=decays)
        params.add("contrast", value=contrast0, min=0.0, max=1.5)
        params.add("offset", value=offset0, min=-0.5, max=1.5)
        params.add("phase", value=phase0, min=-2 * math.pi, max=2 * math.pi)
        return params

    decaying = _fit("damped_sine", damped_sine, x, y, parameters(decays=True))
    if decaying is None:
        return None
    tau, tau_err = decaying.values.get("tau", math.nan), decaying.errors.get("tau", math.nan)
    if decaying.converged and math.isfinite(tau_err) and tau_err <= tau / 2:
        return decaying
    steady = _fit("damped_sine", damped_sine, x, y, parameters(decays=False))
    if steady is None or not steady.converged:
        return decaying if steady is None else steady
    return steady


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
    from lmfit import Parameters

    params = Parameters()
    params.add("center", value=float(xs[int(np.argmax(ys))]), min=float(xs.min()) - span, max=float(xs.max()) + span)
    params.add("fwhm", value=span / 4, min=span / 1e4, max=10 * span)
    params.add("amplitude", value=max(float(np.ptp(ys)), 1e-3), min=0.0)
    params.add("offset", value=float(np.min(ys)))
    return _fit("lorentzian", lorentzian, xs, ys, params)
