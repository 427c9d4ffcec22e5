"""The data page: the running job's points as they arrive, or any catalogued run.

Points from the live stream are collected into a `RunData` at once and drawn on the
next tick of a short timer, so a fast scan costs one redraw per tick, not one per point,
and the event loop stays free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import QRectF, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGraphicsItem,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._plotdata import RunData, RunPlot, plot_run, point_histogram, start_from_scan
from ._protocol import JobInfo, RunSearch, RunSummary, StackClient
from ._tasks import Background

REDRAW_MS = 40
"""The live plot's redraw tick: well under the 0.2 s a point may wait to be seen."""
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
LEGEND_REPETITIONS = 4
CATALOG_TRIES = 5
"""Batches of live rows that may arrive before the run is in the catalog; then it is drawn without it."""
HISTOGRAM_INTERVAL = 0.5
REPETITION_VIEWS = ("overlaid and averaged", "overlaid", "averaged")


class DataPage(QWidget):
    """Plots of one run (live or catalogued), its fit and shot histograms, and a run search."""

    def __init__(self, client: StackClient, background: Background, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client, self.background = client, background
        self.run: RunData | None = None
        self.plot: RunPlot | None = None
        self.live_job: int | None = None
        """The job whose points arrive live (None: a catalogued run is shown)."""
        self._streams: dict[str, str] = {}
        self._pending: list[Mapping[str, Any]] = []
        self._fetching = False
        self._missing = 0
        self._file_keys: dict[str, str] = {}
        """The live job's file names -> data keys (from the live stream)."""
        self.job_lookup: Callable[[int], JobInfo | None] = lambda _job_id: None
        """The queue's knowledge of a job (set by the window), for runs the catalog lacks."""
        self._dirty = False
        self.last_point_received = 0.0
        """Monotonic time the latest live point arrived; ``drawn_points`` counts what the plot holds."""
        self.drawn_points = 0
        self.drawn_at = 0.0
        self._layout: tuple[Any, ...] = ()
        self._items: dict[str, tuple[Any, Any]] = {}
        self._shown: dict[str, Any] = {}
        self._labels: dict[str, str] = {}
        self._histogram_item: Any = None
        self._histogram_at = 0.0
        self._threshold_line: Any = None
        self._fit_shown: dict[str, tuple[float, float | None]] | None = None

        self.graph = pg.PlotWidget(background="w")
        self.graph.showGrid(x=True, y=True, alpha=0.3)
        self.legend = self.graph.addLegend(offset=(-10, 10))
        self.histogram = pg.PlotWidget(background="w")
        self.histogram.setLabel("bottom", "counts per shot")
        self.histogram.setLabel("left", "shots")
        for widget in (self.graph, self.histogram):
            for edge in ("left", "bottom"):
                # An axis draws its grid over the whole plot, so every new point repaints it:
                # replaying its ticks and labels was most of the GUI thread's time under a live
                # scan (py-spy, bench gui).  Kept as a pixmap, redrawn only when it changes.
                widget.getPlotItem().getAxis(edge).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.image = pg.ImageItem()
        self.colour_bar: Any = None
        self.fit_table = QTableWidget(0, 2)
        self.fit_table.setHorizontalHeaderLabels(["Fit parameter", "Value"])
        self.fit_table.verticalHeader().setVisible(False)
        self.fit_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.heading = QLabel("no run yet")
        # The heading's text changes with every point: its width must not re-lay out the
        # page (and repaint the plots) each time.
        self.heading.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        self.follow = QCheckBox("Follow the latest job")
        self.follow.setChecked(True)
        self.repetition_view = QComboBox()
        self.repetition_view.addItems(REPETITION_VIEWS)
        self.repetition_view.currentTextChanged.connect(lambda _t: self.redraw())
        self.shot_point = QSpinBox()
        self.shot_point.setRange(-1, 1_000_000)
        self.shot_point.setSpecialValueText("all points")
        self.shot_point.setValue(-1)
        self.shot_point.valueChanged.connect(lambda _v: self._draw_histogram())

        self.search_experiment = QLineEdit()
        self.search_experiment.setPlaceholderText("any")
        self.search_job = QLineEdit()
        self.search_job.setPlaceholderText("any")
        self.search_since = QLineEdit()
        self.search_since.setPlaceholderText("2026-12-01T09:00")
        self.search_metadata = QLineEdit()
        self.search_metadata.setPlaceholderText("scan.shots=100")
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        self.results = QTableWidget(0, 6)
        self.results.setHorizontalHeaderLabels(["Time", "Experiment", "Job", "Scan", "Points", "Uid"])
        self.results.verticalHeader().setVisible(False)
        self.results.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.results.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.results.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.results.itemSelectionChanged.connect(self._result_selected)
        self.message = QLabel()

        controls = QHBoxLayout()
        controls.addWidget(self.heading, 1)
        controls.addWidget(self.follow)
        controls.addWidget(QLabel("Repetitions"))
        controls.addWidget(self.repetition_view)
        controls.addWidget(QLabel("Shots of"))
        controls.addWidget(self.shot_point)
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.graph)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.histogram)
        side.addWidget(self.fit_table)
        plots.addWidget(side)
        plots.setStretchFactor(0, 3)
        plots.setStretchFactor(1, 1)

        search_box = QGroupBox("Past runs (Tiled)")
        form = QFormLayout()
        form.addRow("Experiment", self.search_experiment)
        form.addRow("Job id", self.search_job)
        form.addRow("Since", self.search_since)
        form.addRow("Metadata", self.search_metadata)
        form.addRow(self.search_button)
        search_layout = QHBoxLayout(search_box)
        search_layout.addLayout(form)
        search_layout.addWidget(self.results, 1)

        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(plots, 3)
        layout.addWidget(search_box, 1)
        layout.addWidget(self.message)

        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    # -- the live stream ----------------------------------------------------------------

    def on_document(self, job_id: int | None, name: str, document: Mapping[str, Any]) -> None:
        """A document of the running job (from the live stream)."""
        if name == "start":
            if not self.follow.isChecked() and self.live_job != job_id:
                return
            self.live_job = job_id
            self.run = RunData(start=document)
            self._streams = {}
            self._dirty = True
            return
        if self.run is None or self.live_job != job_id:
            return
        if name == "descriptor":
            self._streams[str(document["uid"])] = str(document.get("name", ""))
            self.run.add_descriptor(document)
        elif name == "event":
            stream = self._streams.get(str(document.get("descriptor")))
            if stream == "primary":
                self.run.add_event(document["data"])
                self.last_point_received = time.monotonic()
            elif stream == "analysis":
                self.run.add_analysis(document["data"])
        elif name == "stop":
            self.run.exit_status = document.get("exit_status")
        self._dirty = True

    def on_points(
        self,
        job_id: int,
        rows: Sequence[Mapping[str, Any]],
        keys: Mapping[str, str] | None = None,
        *,
        start: Mapping[str, Any] | None = None,
        descriptor: Mapping[str, Any] | None = None,
    ) -> None:
        """Rows of the running job's run (the API's live stream, from the bus or the job's file).

        ``keys`` names the data key of each row's name (the file's own record of it).  The
        run's ``start`` (and primary ``descriptor``) come with its first rows from the bus;
        without them (rows from the file) the start is read from Tiled, and the rows wait."""
        if self.live_job != job_id:
            if not self.follow.isChecked():
                return
            self.live_job, self.run, self._pending, self._missing = job_id, None, [], 0
            self._file_keys = {}
        self._file_keys.update(keys or {})
        if start is not None and (self.run is None or self.run.uid != start.get("uid")):
            self.run, rows, self._pending = RunData(start=start), [*self._pending, *rows], []
            if descriptor is not None:
                self.run.add_descriptor(descriptor)
        if self.run is None:
            self._pending.extend(rows)
            if not self._fetching:
                self._fetching = True
                self.background.call(lambda: self.client.job_run(job_id), self._live_run, self._live_run_failed)
            return
        for row in rows:
            if int(row.get("index", self.run.points)) >= self.run.points:
                self.run.add_row(row, self._file_keys)
        self.last_point_received = time.monotonic()
        self._dirty = True

    def _live_run(self, run: RunData | None) -> None:
        self._fetching = False
        if self.live_job is None or self.run is not None:
            return  # the live stream brought the run's start meanwhile
        if run is None:
            self._missing += 1
            job = self.job_lookup(self.live_job)
            if self._missing < CATALOG_TRIES or job is None or not job.request.get("scan"):
                return  # not catalogued yet: the next rows ask again
            # The run never reached the catalog (it is in its HDF5 file only): drawn from
            # the job's own request and the file's rows.
            start = start_from_scan(
                job.experiment, job.request["scan"], shots=job.request.get("shots"),
                points=job.points_total, job_id=job.id,
            )  # fmt: skip
            run = RunData(start=start)
        elif run.start.get("job_id") not in (self.live_job, str(self.live_job)):
            return
        self.run, pending, self._pending = run, self._pending, []
        self.on_points(self.live_job, pending)

    def _live_run_failed(self, error: Exception) -> None:
        self._fetching = False
        self._failed(error)

    def _tick(self) -> None:
        if self._dirty:
            self._dirty = False
            self.redraw()

    # -- a catalogued run ---------------------------------------------------------------

    def show_run(self, uid: str) -> None:
        """Load a run from the catalog and show it (stops following live points)."""
        self.message.setText(f"loading {uid[:8]} ...")
        self.background.call(lambda: self.client.run_data(uid), self.show_data, self._failed)

    def show_data(self, run: RunData) -> None:
        self.live_job = None
        self.run = run
        self.message.setText("")
        self.redraw()

    def search(self) -> None:
        try:
            query = self._query()
        except ValueError as exc:
            self.message.setText(f"<font color='#d62728'>{exc}</font>")
            return
        self.background.call(lambda: self.client.search_runs(query), self.show_results, self._failed)

    def _query(self) -> RunSearch:
        job = self.search_job.text().strip()
        since = self.search_since.text().strip()
        metadata: dict[str, Any] = {}
        for pair in filter(None, (p.strip() for p in self.search_metadata.text().split(","))):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"metadata: '{pair}' is not KEY=VALUE")
            metadata[key.strip()] = _literal(value.strip())
        try:
            when = datetime.fromisoformat(since).astimezone() if since else None
        except ValueError:
            raise ValueError(f"since: '{since}' is not an ISO-8601 time") from None
        if job and not job.isdigit():
            raise ValueError(f"job id: '{job}' is not a number")
        return RunSearch(
            experiment=self.search_experiment.text().strip(),
            job_id=int(job) if job else None,
            since=when,
            metadata=metadata,
        )

    def show_results(self, runs: Sequence[RunSummary]) -> None:
        self.results.setRowCount(0)
        for row, run in enumerate(runs):
            self.results.insertRow(row)
            cells = (
                run.time.strftime("%Y-%m-%d %H:%M:%S") if run.time else "",
                run.experiment,
                "" if run.job_id is None else str(run.job_id),
                "" if run.scan_id is None else str(run.scan_id),
                "" if run.points is None else str(run.points),
                run.uid,
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, run.uid)
                self.results.setItem(row, column, item)
        self.message.setText(f"{len(runs)} runs found")

    def _result_selected(self) -> None:
        items = self.results.selectedItems()
        if items:
            self.follow.setChecked(False)
            self.show_run(str(items[0].data(Qt.ItemDataRole.UserRole)))

    # -- drawing ------------------------------------------------------------------------

    def redraw(self) -> None:
        if self.run is None:
            return
        self.plot = drawn = plot_run(self.run)
        # Items are kept while the run and what is shown stay the same, and only their
        # data change: a live scan costs a setData per curve per tick, not new items.
        many = len(drawn.curves) > LEGEND_REPETITIONS + 1
        layout = (self.run.uid, drawn.image is not None, self.repetition_view.currentText(), many)
        if layout != self._layout:
            self._layout = layout
            self._items.clear()
            self._shown.clear()
            self.graph.clear()
            self.legend.clear()
            if self.colour_bar is not None:
                self.colour_bar.hide()
            self._fix_ranges(drawn)
        done = f"{drawn.points}" + (f" of {drawn.expected_points}" if drawn.expected_points else "")
        live = f"job {self.live_job}, live" if self.live_job is not None else "catalogued"
        status = f", {self.run.exit_status}" if self.run.exit_status else ""
        self.heading.setText(f"<b>{drawn.title}</b>  {done} points ({live}{status})")
        if drawn.image is not None:
            self._draw_image(drawn)
        else:
            self._draw_curves(drawn)
        self._draw_fit_table(drawn)
        self._draw_histogram()
        self.drawn_points = drawn.points
        self.drawn_at = time.monotonic()

    def _fix_ranges(self, drawn: RunPlot) -> None:
        """The scan's span on x, and 0-1 for a fraction, from the start: axes that do not
        move as points arrive are not laid out and repainted with every point."""
        view = self.graph.getPlotItem().getViewBox()
        view.enableAutoRange()
        if drawn.image is not None or not drawn.axes or not drawn.axes[0].values:
            return
        low, high = min(drawn.axes[0].values), max(drawn.axes[0].values)
        pad = 0.03 * (high - low or 1.0)
        view.setXRange(low - pad, high + pad, padding=0)
        ys = np.concatenate([c.y for c in drawn.curves]) if drawn.curves else np.zeros(0)
        ys = ys[np.isfinite(ys)]
        if ys.size and float(ys.min()) >= 0 and float(ys.max()) <= 1:
            view.setYRange(-0.05, 1.05, padding=0)

    def _draw_curves(self, drawn: RunPlot) -> None:
        view = self.repetition_view.currentText()
        self._set_label("bottom", drawn.x_label)
        self._set_label("left", drawn.signal_label)
        several = len(drawn.curves) > 1
        wanted = {"fit"} if drawn.fit is not None else set()
        for index, curve in enumerate(drawn.curves):
            if several and ((curve.averaged and view == "overlaid") or (not curve.averaged and view == "averaged")):
                continue
            wanted.add(curve.label)
            colour = "k" if curve.averaged else COLOURS[index % len(COLOURS)]
            finite = np.isfinite(curve.yerr) if curve.yerr is not None else None
            if curve.label not in self._items:
                # Dozens of repetitions are context for their average: thin lines, without
                # markers, error bars or legend entries (which say nothing and cost each repaint).
                full = curve.averaged or len(drawn.curves) <= LEGEND_REPETITIONS + 1
                named = curve.averaged or index < LEGEND_REPETITIONS
                line = self.graph.plot(
                    pen=pg.mkPen(colour, width=2.5 if curve.averaged else 1.0), symbol="o" if full else None,
                    symbolSize=5, symbolBrush=colour, symbolPen=None, name=curve.label if named else None,
                )  # fmt: skip
                bars = None
                if full:
                    bars = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), pen=pg.mkPen(colour, width=1), beam=0)
                    self.graph.addItem(bars)
                self._items[curve.label] = (line, bars)
            line, bars = self._items[curve.label]
            # A finished repetition does not change: only the growing ones are set again.
            shown = self._shown.get(curve.label)
            if shown is not None and np.array_equal(shown, curve.y, equal_nan=True):
                continue
            self._shown[curve.label] = curve.y
            line.setData(curve.x, curve.y)
            if bars is not None and curve.yerr is not None and finite is not None:
                bars.setData(x=curve.x[finite], y=curve.y[finite], height=2 * curve.yerr[finite])
        if drawn.fit is not None:
            if "fit" not in self._items:
                fit_line = self.graph.plot(pen=pg.mkPen("#d62728", width=2), name=f"fit: {drawn.fit.model}")
                self._items["fit"] = (fit_line, None)
            self._items["fit"][0].setData(drawn.fit.x, drawn.fit.y)
        for label in set(self._items) - wanted:
            self._shown.pop(label, None)
            line, bars = self._items.pop(label)
            self.legend.removeItem(line)
            self.graph.removeItem(line)
            if bars is not None:
                self.graph.removeItem(bars)

    def _set_label(self, side: str, text: str) -> None:
        # Setting an axis label, even to the same text, makes pyqtgraph lay the axis out and
        # paint it again (its cached picture dropped): half the GUI thread's time under a
        # live scan (py-spy, bench gui).  Set only when it changes.
        if self._labels.get(side) != text:
            self._labels[side] = text
            self.graph.setLabel(side, text)

    def _draw_image(self, drawn: RunPlot) -> None:
        image = drawn.image
        assert image is not None
        self._set_label("bottom", image.x_axis.label)
        self._set_label("left", image.y_axis.label)
        values = np.nan_to_num(
            image.values, nan=float(np.nanmin(image.values)) if np.isfinite(image.values).any() else 0
        )
        # ImageItem's first index is x: columns run along the inner (x) axis.
        self.image.setImage(values.T, autoLevels=True)
        dx = float(np.diff(image.x).min()) if image.x.size > 1 else 1.0
        dy = float(np.diff(image.y).min()) if image.y.size > 1 else 1.0
        self.image.setRect(
            QRectF(
                float(image.x[0]) - dx / 2, float(image.y[0]) - dy / 2,
                float(np.ptp(image.x)) + dx, float(np.ptp(image.y)) + dy,
            )
        )  # fmt: skip
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.graph.addItem(self.image)
        if self.colour_bar is None:
            self.colour_bar = self.graph.getPlotItem().addColorBar(
                self.image, colorMap="viridis", label=drawn.signal_label
            )
        else:
            self.colour_bar.setImageItem(self.image)
            self.colour_bar.show()

    def _draw_histogram(self) -> None:
        # While points arrive, the histogram of thousands of shots changes little from
        # one point to the next: it is redrawn a few times a second, not every tick.
        now = time.monotonic()
        if self.live_job is not None and now - self._histogram_at < HISTOGRAM_INTERVAL:
            return
        self._histogram_at = now
        if self._histogram_item is None:
            self._histogram_item = self.histogram.plot(
                [0, 1], [0], stepMode="center", fillLevel=0, brush=(31, 119, 180, 120), pen=pg.mkPen("#1f77b4")
            )
            self._threshold_line = pg.InfiniteLine(0, angle=90, pen=pg.mkPen("#d62728", style=Qt.PenStyle.DashLine))
            self.histogram.addItem(self._threshold_line)
        if self.run is None or self.plot is None or not self.plot.signal:
            return
        index = self.shot_point.value()
        chosen = point_histogram(self.run, self.plot.signal, index) if index >= 0 else None
        histogram = chosen if chosen is not None else (self.plot.histograms[0] if self.plot.histograms else None)
        if histogram is None:
            self._histogram_item.setData([0, 1], [0])
            self._threshold_line.hide()
            return
        self._histogram_item.setData(histogram.edges, histogram.counts)
        self.histogram.setTitle(histogram.label, size="8pt")
        if histogram.threshold is not None:
            self._threshold_line.setValue(histogram.threshold)
            self._threshold_line.show()
        else:
            self._threshold_line.hide()

    def _draw_fit_table(self, drawn: RunPlot) -> None:
        parameters = drawn.fit.parameters if drawn.fit is not None else {}
        if not parameters and self.run is not None:
            parameters = {k: (v, None) for k, v in self.run.fit.items() if not k.endswith("_err")}
        if parameters == self._fit_shown:
            return
        self._fit_shown = parameters
        self.fit_table.setRowCount(0)
        for row, (name, (value, error)) in enumerate(parameters.items()):
            self.fit_table.insertRow(row)
            self.fit_table.setItem(row, 0, QTableWidgetItem(name))
            text = f"{value:.6g} ± {error:.2g}" if error is not None else f"{value:.6g}"
            self.fit_table.setItem(row, 1, QTableWidgetItem(text))

    def _failed(self, error: Exception) -> None:
        self.message.setText(f"<font color='#d62728'>{error}</font>")


def _literal(text: str) -> Any:
    """A search value: a number when it reads as one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(text.lower(), text)
