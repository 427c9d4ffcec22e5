"""Fits report only what the data determine, rounded to their uncertainty."""

from __future__ import annotations

import numpy as np

from orchestrion.analysis import damped_sine, fit_oscillation, fit_spectroscopy, format_with_error, rabi_lineshape

RNG = np.random.default_rng(11)


def test_an_oscillation_without_visible_decay_reports_no_decay_time() -> None:
    t = np.linspace(0, 60e-6, 51)
    y = damped_sine(t, 50e3, 1.0, 0.98, 0.5, 0.0) + RNG.normal(0, 0.02, t.size)
    fit = fit_oscillation(t, y)
    assert fit is not None
    assert fit.converged, fit.message
    assert "tau" not in fit.values
    assert abs(fit.values["frequency"] - 50e3) < 3 * fit.errors["frequency"] + 100


def test_a_visible_decay_is_fitted_with_an_error_smaller_than_the_value() -> None:
    t = np.linspace(0, 200e-6, 81)
    y = damped_sine(t, 40e3, 60e-6, 0.95, 0.5, 0.0) + RNG.normal(0, 0.01, t.size)
    fit = fit_oscillation(t, y)
    assert fit is not None
    assert fit.converged, fit.message
    assert fit.errors["tau"] < fit.values["tau"] / 2
    assert abs(fit.values["tau"] - 60e-6) < 4 * fit.errors["tau"]


def test_spectroscopy_holds_the_rabi_frequency_and_fits_centre_and_contrast() -> None:
    pulse, rabi = 10e-6, 50e3
    d = np.linspace(-60e3, 60e3, 25)
    y = rabi_lineshape(d, 2e3, rabi, pulse, 0.97, 0.01) + RNG.normal(0, 0.02, d.size)
    fit = fit_spectroscopy(d, y, pulse_time=pulse, rabi_frequency=rabi)
    assert fit is not None
    assert fit.converged, fit.message
    assert set(fit.values) == {"center", "contrast", "offset"}
    assert fit.fixed["rabi_frequency"] == rabi
    assert fit.errors["contrast"] < 0.1
    assert abs(fit.values["center"] - 2e3) < 4 * fit.errors["center"]


def test_flat_data_is_a_fit_that_did_not_converge() -> None:
    d = np.linspace(-60e3, 60e3, 25)
    fit = fit_spectroscopy(d, np.zeros(d.size), pulse_time=10e-6, rabi_frequency=50e3)
    assert fit is not None
    assert not fit.converged
    assert fit.message


def test_values_are_rounded_to_two_digits_of_their_error() -> None:
    assert format_with_error(12642816365.97, 470) == "12642816370 ± 470"
    assert format_with_error(-2.35363216928, 0.027) == "-2.354 ± 0.027"
    assert format_with_error(0.5, None) == "0.5"
