"""Fits as a callback on the bundled points, and the Lorentzian line shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
from event_model import compose_run

from orchestrion.analysis import (
    FitResult,
    LiveFit,
    damped_sine,
    fit_lorentzian,
    fit_oscillation,
    format_with_error,
    lorentzian,
)
from orchestrion.config import OrchestrionConfig
from orchestrion.experiment import RunRequest
from orchestrion.pipeline import BUNDLED, COMPLETE_KEY
from orchestrion.session import EmbeddedSession

NUMBER = {"dtype": "number", "shape": [], "source": "sim://x"}


def test_a_live_fit_follows_the_bundled_points_and_ends_at_the_stop() -> None:
    rng = np.random.default_rng(3)
    t = np.linspace(0, 50e-6, 41)
    truth = {"frequency": 50e3, "tau": 200e-6, "contrast": 0.9, "offset": 0.5, "phase": 0.0}
    y = damped_sine(t, **truth) + rng.normal(0, 0.02, t.size)
    run = compose_run(metadata={"hints": {"dimensions": [(["point-duration"], "primary")]}})
    bundled = run.compose_descriptor(
        name=BUNDLED,
        data_keys={
            "point-duration": NUMBER,
            "sequencer-bright_fraction": NUMBER,
            COMPLETE_KEY: {"dtype": "boolean", "shape": [], "source": "bundler"},
        },
    )
    fits: list[tuple[str, FitResult]] = []
    live = LiveFit(
        lambda x, y: fit_oscillation(x, y), stream=BUNDLED, every=10, on_fit=lambda uid, fit: fits.append((uid, fit))
    )
    live("start", run.start_doc)
    live("descriptor", bundled.descriptor_doc)
    for i, (ti, yi) in enumerate(zip(t, y, strict=True)):
        data = {"point-duration": float(ti), "sequencer-bright_fraction": float(yi), COMPLETE_KEY: True}
        live("event", bundled.compose_event(data=data, timestamps=dict.fromkeys(data, float(i))))
    # An incomplete point is left out of the fit.
    data = {"point-duration": 1e-3, "sequencer-bright_fraction": math.nan, COMPLETE_KEY: False}
    live("event", bundled.compose_event(data=data, timestamps=dict.fromkeys(data, 99.0)))
    assert len(fits) == 4  # after 10, 20, 30 and 40 points
    live("stop", run.compose_stop())
    assert len(fits) == 5
    result = live.results[run.start_doc["uid"]]
    assert result.values["frequency"] == pytest.approx(50e3, abs=4 * result.errors["frequency"] + 100)
    assert 0 < result.errors["frequency"] < 2e3


def test_a_lorentzian_fit_finds_centre_and_width_with_uncertainties() -> None:
    rng = np.random.default_rng(5)
    x = np.linspace(-100e3, 100e3, 61)
    y = lorentzian(x, 12e3, 30e3, 0.8, 0.05) + rng.normal(0, 0.01, x.size)
    fit = fit_lorentzian(x, y)
    assert fit is not None
    assert fit.values["center"] == pytest.approx(12e3, abs=4 * fit.errors["center"])
    assert fit.values["fwhm"] == pytest.approx(30e3, abs=4 * fit.errors["fwhm"])
    assert fit.errors["center"] < 1e3
    assert fit_lorentzian([], []) is None


def test_a_live_fit_subscribed_to_the_runengine_fits_a_real_run(config: OrchestrionConfig) -> None:
    # Where users subscribe it: the RunEngine's documents, not post-processing's.
    fits: list[FitResult] = []
    live = LiveFit(lambda x, y: fit_lorentzian(x, y), every=5, on_fit=lambda uid, fit: fits.append(fit))
    session = EmbeddedSession(config.model_copy(update={"tiled_enabled": False}))
    try:
        summary = session.run(
            RunRequest(experiment="spectroscopy", scan=("spectroscopy.detuning=-150e3:150e3:21",), shots=50),
            extra_callbacks=[live],
        )
    finally:
        session.close()
    assert summary.status == "success"
    assert len(fits) == 5  # after 5, 10, 15 and 20 points, and at the stop
    result = live.results[summary.run_uid]
    # The stored qubit frequency is 15 kHz off the true one: the line is found there.
    assert abs(result.values["center"] - summary.analysis["center"]) < 3 * result.errors["center"] + 5e3


def test_fit_results_are_printed_to_their_uncertainty() -> None:
    assert format_with_error(12642.8123, 12.34) == "12643 ± 12"
    assert format_with_error(0.0512, 1.8) == "0.1 ± 1.8"
    assert format_with_error(1.19999, 0.96) == "1.20 ± 0.96"
    assert format_with_error(12642812345.6, 123.0) == "12642812350 ± 120"
    assert format_with_error(48640.2, 2862.0) == "48600 ± 2900"
    assert format_with_error(3.0, None) == "3"
