"""`RunPlot`s drawn with matplotlib: the figures `orchestrion plot` saves or shows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrion.schema import nexus_name

from ._catalog import run_data_from_node
from ._plotdata import RunPlot, plot_run


def _format_value(value: float, error: float | None) -> str:
    return f"{value:.6g} ± {error:.2g}" if error is not None else f"{value:.6g}"


def draw_figure(plot: RunPlot, figure: Any) -> None:
    """Draw ``plot`` on a matplotlib ``figure``: the data (with the fit) and the shot histogram."""
    with_histogram = bool(plot.histograms)
    grid = figure.add_gridspec(1, 2 if with_histogram else 1, width_ratios=[3, 1] if with_histogram else [1])
    main = figure.add_subplot(grid[0, 0])
    if plot.image is not None:
        image = plot.image
        mesh = main.pcolormesh(image.x, image.y, image.values, shading="nearest")
        figure.colorbar(mesh, ax=main, label=plot.signal_label)
        main.set_xlabel(image.x_axis.label)
        main.set_ylabel(image.y_axis.label)
    else:
        for curve in plot.curves:
            style = {"linewidth": 2.0, "color": "black"} if curve.averaged else {"alpha": 0.8}
            main.errorbar(
                curve.x, curve.y, yerr=curve.yerr, fmt="o-", markersize=3, capsize=2, label=curve.label, **style
            )
        if plot.fit is not None:
            text = "\n".join(f"{name} = {_format_value(*pair)}" for name, pair in plot.fit.parameters.items())
            main.plot(plot.fit.x, plot.fit.y, "-", color="tab:red", label=f"fit: {plot.fit.model}")
            main.text(0.02, 0.98, text, transform=main.transAxes, va="top", fontsize=7, family="monospace")
        main.set_xlabel(plot.x_label)
        main.set_ylabel(plot.signal_label)
        if plot.curves:
            main.legend(loc="upper right", fontsize=7)
    done = f"{plot.points}" + (f" of {plot.expected_points}" if plot.expected_points else "")
    main.set_title(f"{plot.title}  ({done} points)", fontsize=9)
    if with_histogram:
        side = figure.add_subplot(grid[0, 1])
        for histogram in plot.histograms:
            side.stairs(histogram.counts, histogram.edges, fill=True, alpha=0.6, label=histogram.label)
            if histogram.threshold is not None:
                side.axvline(histogram.threshold, color="tab:red", linestyle="--", label="threshold")
        side.set_xlabel("counts per shot")
        side.set_ylabel("shots")
        side.legend(fontsize=6)


def save_figure(plot: RunPlot, path: Path) -> Path:
    """Write ``plot`` as an image file (format from the suffix); no display needed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), layout="constrained")
    draw_figure(plot, figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def show_figure(plot: RunPlot) -> None:
    """Open ``plot`` in a matplotlib window and wait until it is closed."""
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(10, 4.5), layout="constrained")
    draw_figure(plot, figure)
    plt.show()


def write_run_figures(client: Any, run_uids: Sequence[str], directory: Path) -> list[Path]:
    """One PNG per run of a catalog, named after its order, experiment and uid; their paths."""
    written = []
    for number, uid in enumerate(run_uids, start=1):
        run = run_data_from_node(client[uid])
        experiment = nexus_name(str(run.start.get("experiment", "run")))
        written.append(save_figure(plot_run(run), directory / f"{number:02d}_{experiment}_{uid[:8]}.png"))
    return written
