"""`orchestrion plot` and the run plot model it shares with the GUI's data page.

Real runs on the simulated lab, catalogued in the embedded Tiled catalog, read back and
drawn; the model is also fed the same run's documents one by one, as the live stream
delivers them, and must agree with what the catalog gives.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from orchestrion.cli import cli
from orchestrion.config import OrchestrionConfig
from orchestrion.experiment import RunRequest
from orchestrion.gui import RunData, find_run, open_catalog, plot_run, run_data_from_node
from orchestrion.pipeline import build_pipeline
from orchestrion.session import EmbeddedSession

from .pipeline_docs import whole_run

ORCHESTRION = Path(sys.executable).with_name("orchestrion")
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three real runs (a repeated 1-D scan with its fit, a 2-axis grid, an oscillation) and their documents."""
    home = tmp_path_factory.mktemp("home")
    config = OrchestrionConfig(home=home, sim_time_scale=0.02, sim_seed=1234)  # type: ignore[call-arg]
    session = EmbeddedSession(config)
    documents: list[tuple[str, dict[str, Any]]] = []
    requests = {
        "repeated": RunRequest(
            experiment="spectroscopy", scan=("spectroscopy.detuning=-150e3:150e3:21",), repetitions=2, md={"job_id": 41}
        ),
        "grid": RunRequest(
            experiment="spectroscopy",
            scan=("spectroscopy.detuning=-100e3:100e3:5", "qubit.pi_time=5e-6:15e-6:3"),
            shots=40,
        ),
        "rabi": RunRequest(experiment="rabi_flop"),
    }
    uids = {}
    try:
        for name, request in requests.items():
            collect = documents if name == "repeated" else []
            summary = session.run(request, extra_callbacks=[lambda n, d, c=collect: c.append((n, d))])
            assert summary.status == "success"
            assert summary.tiled
            uids[name] = summary.run_uid
    finally:
        session.close()
    return {"config": config, "uids": uids, "documents": documents, "home": home}


def _catalogued(config: OrchestrionConfig, reference: str) -> RunData:
    connection = open_catalog(config)
    try:
        return run_data_from_node(find_run(connection.client, reference))
    finally:
        connection.close()


def test_a_repeated_scan_is_drawn_per_repetition_and_averaged_with_its_fit(runs: dict[str, Any]) -> None:
    run = _catalogued(runs["config"], runs["uids"]["repeated"])
    drawn = plot_run(run)
    assert drawn.points == drawn.expected_points == 42
    assert [a.id for a in drawn.axes] == ["spectroscopy.detuning"]
    assert drawn.signal == "sequencer-bright_fraction"
    *repetitions, average = drawn.curves
    assert [c.label for c in repetitions] == ["repetition 1", "repetition 2"]
    assert all(c.x.size == 21 for c in drawn.curves)
    assert average.averaged
    # Every measured point is drawn, each with a binomial error bar of its 100 shots.
    measured = np.sort(np.asarray(run.columns["sequencer-bright_fraction"], dtype=float))
    assert np.array_equal(np.sort(np.concatenate([c.y for c in repetitions])), measured)
    for curve in repetitions:
        assert curve.yerr is not None
        assert np.all(curve.yerr > 0)
        assert np.all(curve.yerr <= 0.5 / np.sqrt(100) + 1e-12)
    np.testing.assert_allclose(average.y, (repetitions[0].y + repetitions[1].y) / 2)
    # The fit the run stored, evaluated across the scan, runs through the points.
    assert drawn.fit is not None
    assert drawn.fit.model == "rabi_lineshape"
    assert drawn.fit.parameters["center"][0] == run.fit["center"]
    on_points = np.interp(average.x, drawn.fit.x, drawn.fit.y)
    assert float(np.sqrt(np.mean((on_points - average.y) ** 2))) < 0.08
    # Per-shot counts: every shot of every point, with the detection threshold.
    (histogram,) = drawn.histograms
    assert histogram.counts.sum() == 42 * 100
    assert histogram.threshold == 5


def test_the_live_documents_give_the_same_plot_as_the_catalog(runs: dict[str, Any]) -> None:
    live = RunData.from_documents(runs["documents"])
    catalogued = _catalogued(runs["config"], runs["uids"]["repeated"])
    assert live.uid == catalogued.uid
    live_plot, catalogued_plot = plot_run(live), plot_run(catalogued)
    for a, b in zip(live_plot.curves, catalogued_plot.curves, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert live.fit == pytest.approx(catalogued.fit)
    # Half the points in: half drawn, nothing else assumed.
    start = next(i for i, (n, d) in enumerate(runs["documents"]) if n == "start")
    partial = RunData.from_documents(runs["documents"][start : start + 25])
    assert 0 < plot_run(partial).points < 42


def test_a_two_axis_grid_is_an_image_of_every_cell(runs: dict[str, Any]) -> None:
    run = _catalogued(runs["config"], runs["uids"]["grid"])
    drawn = plot_run(run)
    assert drawn.image is not None
    assert drawn.image.values.shape == (5, 3)
    assert bool(np.all(np.isfinite(drawn.image.values)))
    assert drawn.image.y_axis.id == "spectroscopy.detuning"
    assert drawn.image.x_axis.unit == "s"
    assert drawn.fit is None


def test_orchestrion_plot_writes_a_figure_for_a_run_a_job_and_the_latest(runs: dict[str, Any], tmp_path: Path) -> None:
    uid = runs["uids"]["repeated"]
    # The console script itself once (a process of its own, as a user runs it) ...
    out = tmp_path / "figure.png"
    env = {"ORCHESTRION_HOME": str(runs["home"]), "PATH": str(ORCHESTRION.parent)}
    result = subprocess.run(
        [str(ORCHESTRION), "plot", uid[:8], "--out", str(out)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    pixels = imread(out)
    assert pixels.shape[0] > 300
    assert pixels.shape[1] > 600
    # The fit is drawn in red over the repeated scan: a red stripe is on the figure.
    red = pixels[..., :3]
    assert int(np.sum((red[..., 0] > 0.7) & (red[..., 1] < 0.3) & (red[..., 2] < 0.3))) > 200
    # ... and each way of naming the run through the command, in this process.
    for reference, expected in (("41", uid), ("-1", runs["uids"]["rabi"]), ("-3", uid)):
        named = tmp_path / f"{reference}.png"
        outcome = CliRunner().invoke(cli, ["plot", reference, "--out", str(named)], env=env)
        assert outcome.exit_code == 0, outcome.output
        assert named.is_file()
        assert _catalogued(runs["config"], reference).uid == expected


@pytest.mark.parametrize(
    ("reference", "message"),
    [("99", "job 99: no run of it in the catalog"), ("abc", "give at least 6 characters"), ("-9", "holds 3 runs")],
)
def test_a_run_that_is_not_there_is_one_line_naming_it(
    runs: dict[str, Any], tmp_path: Path, reference: str, message: str
) -> None:
    out = tmp_path / "never.png"
    env = {"ORCHESTRION_HOME": str(runs["home"])}
    result = CliRunner().invoke(cli, ["plot", reference, "--out", str(out)], env=env)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_uid_prefix_of_digits_names_its_run_and_not_a_job(runs: dict[str, Any], tmp_path: Path) -> None:
    # About one uid in forty starts with eight digits: "31415926" is no job, it is this run.
    uid = "31415926-5358-4979-8323-846264338327"
    pipeline = build_pipeline(runs["config"])
    try:
        for name, doc in whole_run(5, uid=uid):
            pipeline(name, doc)
        assert pipeline.wait_catalogued(uid, timeout=120)
    finally:
        pipeline.close()
    assert _catalogued(runs["config"], uid[:8]).uid == uid
    out = tmp_path / "digits.png"
    result = CliRunner().invoke(cli, ["plot", uid[:8], "--out", str(out)], env={"ORCHESTRION_HOME": str(runs["home"])})
    assert result.exit_code == 0, result.output
    assert out.is_file()
