"""A run as plot data: what the data page draws and `orchestrion plot` saves.

One model, two renderers: `RunData` holds a run's start document, its primary-stream
points and its fit (read from Tiled, or gathered point by point from the live stream);
`plot_run` turns it into a `RunPlot` (curves with error bars per repetition and their
average, an image for two-axis grids, per-shot count histograms, the fit curve) that
matplotlib (`save_figure`) and pyqtgraph (the GUI's data page) draw without deciding
anything of their own.  No Qt here: the plot command runs without a display.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orchestrion.analysis import damped_sine, lorentzian, rabi_lineshape
from orchestrion.schema import (
    ANALYSIS,
    POINT_KEY,
    PRIMARY,
    fit_name,
    id_to_data_key,
    nexus_name,
)

Array = NDArray[np.float64]

REPETITION_KEY = "point-repetition"
"""The scan point's repetition (0-based), read with every point (`ScanPointInfo`)."""
COUNTS_SUFFIX = "-counts"
"""Per-shot photon counts of a detector: a (points x shots) array."""
FIT_SAMPLES = 400


@dataclass(frozen=True)
class Axis:
    """One scanned axis: a stored parameter or a device setting."""

    id: str
    key: str
    """Its data key in the primary stream."""
    values: tuple[float, ...]
    unit: str = ""

    @property
    def label(self) -> str:
        return f"{self.id} ({self.unit})" if self.unit else self.id


@dataclass
class RunData:
    """A run's start document, its points (columns by data key) and its fit results."""

    start: Mapping[str, Any]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    fit: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    hinted: tuple[str, ...] = ()
    """The primary stream's hinted fields (its descriptor's ``hints``), measured signals first."""
    exit_status: str | None = None
    keys: tuple[str, ...] = ()
    """Every data key of the primary stream (from its descriptor)."""
    shot_counts: dict[str, tuple[int, NDArray[Any], int, int]] = field(default_factory=dict, repr=False, compare=False)
    """Per-shot count histograms so far, by data key: (points counted, counts per value, shots, points)."""

    @property
    def uid(self) -> str:
        return str(self.start.get("uid", ""))

    @property
    def points(self) -> int:
        return max((len(v) for v in self.columns.values()), default=0)

    @property
    def expected_points(self) -> int | None:
        total = self.start.get("num_points")
        return int(total) if isinstance(total, int) else None

    # -- from documents (the live stream) -----------------------------------------------

    def add_descriptor(self, descriptor: Mapping[str, Any]) -> None:
        """Take units and hints from the primary stream's descriptor."""
        if descriptor.get("name") != PRIMARY:
            return
        self.keys = tuple(descriptor.get("data_keys", {}))
        for key, info in descriptor.get("data_keys", {}).items():
            if info.get("units"):
                self.units[key] = str(info["units"])
        hinted: list[str] = []
        for hint in descriptor.get("hints", {}).values():
            hinted.extend(hint.get("fields", ()))
        self.hinted = tuple(hinted)

    def add_event(self, data: Mapping[str, Any]) -> None:
        """One primary-stream point (an event's ``data``)."""
        done = self.points
        for key, value in data.items():
            self.columns.setdefault(key, [None] * done).append(value)
        # A key this event lacks keeps its column aligned with the others.
        for column in self.columns.values():
            if len(column) == done:
                column.append(None)

    def add_row(self, row: Mapping[str, Any], file_keys: Mapping[str, str] | None = None) -> None:
        """A point as a file row names it (NeXus names, "index" its row): mapped back to data keys.

        ``file_keys`` is the file's own record of each name's data key; without it or the
        run's descriptor only the point's own keys and the scanned axes are known, and
        the other columns keep their file names."""
        known = self.keys or (POINT_KEY, REPETITION_KEY, *(a.key for a in scan_axes(self.start)))
        names = {nexus_name(key): key for key in known} | dict(file_keys or {})
        self.add_event({names.get(name, name): value for name, value in row.items() if name != "index"})

    def add_analysis(self, data: Mapping[str, Any]) -> None:
        """The analysis stream's event: fit results."""
        self.fit.update({fit_name(k): float(v) for k, v in data.items() if _is_number(v)})

    @classmethod
    def from_documents(cls, documents: Iterable[tuple[str, Mapping[str, Any]]]) -> RunData:
        """A run from its documents in order (start, descriptors, events, stop)."""
        run: RunData | None = None
        streams: dict[str, str] = {}
        for name, doc in documents:
            if name == "start":
                run = cls(start=doc)
            elif run is None:
                continue
            elif name == "descriptor":
                streams[doc["uid"]] = doc.get("name", "")
                run.add_descriptor(doc)
            elif name == "event":
                stream = streams.get(doc["descriptor"])
                if stream == PRIMARY:
                    run.add_event(doc["data"])
                elif stream == ANALYSIS:
                    run.add_analysis(doc["data"])
            elif name == "stop":
                run.exit_status = doc.get("exit_status")
        if run is None:
            raise ValueError("no start document")
        return run


def start_from_scan(experiment: str, scan: Sequence[str], *, shots: int | None, points: int | None,
                    **metadata: Any) -> dict[str, Any]:  # fmt: skip
    """A start document's plotting part from a job's scan texts ("ID=START:STOP:NUM" or "ID=V1,V2"),
    for a run whose own start is not to be had (a catalog that was not reached)."""
    axes = []
    for text in scan:
        axis_id, _, spec = str(text).partition("=")
        parts = spec.split(":")
        try:
            values = (
                np.linspace(float(parts[0]), float(parts[1]), int(parts[2])).tolist()
                if len(parts) == 3
                else [float(v) for v in spec.split(",") if v.strip()]
            )
        except ValueError:
            values = []
        # A scan text does not say whether it sets a device: drawn as a parameter axis.
        axes.append({"id": axis_id, "kind": "parameter", "values": values})
    return {"experiment": experiment, "num_points": points, "scan": {"axes": axes, "shots": shots}, **metadata}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


# -- what is drawn --------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """Measured signal against the first axis, with one-sigma error bars."""

    label: str
    x: Array
    y: Array
    yerr: Array | None
    averaged: bool = False


@dataclass(frozen=True)
class Image:
    """The mean signal on a two-axis grid: rows along ``y_axis``, columns along ``x_axis``."""

    x_axis: Axis
    y_axis: Axis
    x: Array
    y: Array
    values: Array
    """Shape (len(y), len(x)); NaN where no point has arrived yet."""


@dataclass(frozen=True)
class Histogram:
    """Per-shot photon counts: how many shots gave each count."""

    label: str
    edges: Array
    counts: Array
    threshold: float | None = None


@dataclass(frozen=True)
class FitCurve:
    """The fitted model evaluated across the scan."""

    model: str
    x: Array
    y: Array
    parameters: dict[str, tuple[float, float | None]]
    """Name -> (value, one-sigma error)."""


@dataclass(frozen=True)
class RunPlot:
    """Everything a renderer draws for one run."""

    title: str
    axes: tuple[Axis, ...]
    signal: str
    signal_label: str
    curves: tuple[Curve, ...]
    image: Image | None
    histograms: tuple[Histogram, ...]
    fit: FitCurve | None
    points: int
    expected_points: int | None

    @property
    def x_label(self) -> str:
        return self.axes[0].label if self.axes else POINT_KEY


def scan_axes(start: Mapping[str, Any], units: Mapping[str, str] | None = None) -> tuple[Axis, ...]:
    """The run's scanned axes in scan order, each with its primary-stream data key.

    The runner hints stored-parameter axes first (``point-<id>``), then device axes
    (the device's hinted read-back), so the dimensions pair with the axes in that order.
    """
    scan = start.get("scan") or {}
    described = list(scan.get("axes") or [])
    dimensions = [dims[0][0] for dims in (start.get("hints") or {}).get("dimensions", []) if dims and dims[0]]
    ordered = [a for a in described if a.get("kind") != "device"] + [a for a in described if a.get("kind") == "device"]
    keys: dict[str, str] = {}
    for axis, key in zip(ordered, dimensions, strict=False):
        keys[axis["id"]] = key
    axes = []
    for axis in described:
        key = keys.get(axis["id"], f"point-{id_to_data_key(axis['id'])}")
        axes.append(
            Axis(
                id=str(axis["id"]),
                key=key,
                values=tuple(float(v) for v in axis.get("values", ())),
                unit=(units or {}).get(key, ""),
            )
        )
    return tuple(axes)


def measured_signal(run: RunData, axes: Sequence[Axis]) -> str | None:
    """The data key of the measured signal: the first hinted, numeric, non-axis field."""
    excluded = {a.key for a in axes} | {POINT_KEY, REPETITION_KEY}
    candidates = [*run.hinted, *sorted(run.columns)]
    for key in candidates:
        if key in excluded or key not in run.columns:
            continue
        values = [v for v in run.columns[key] if v is not None]
        if values and all(_is_number(v) for v in values):
            return key
    return None


def _column(run: RunData, key: str) -> Array:
    return np.array([np.nan if v is None else float(v) for v in run.columns.get(key, [])], dtype=float)


def _shots(run: RunData) -> int | None:
    shots = (run.start.get("scan") or {}).get("shots")
    return int(shots) if isinstance(shots, int) and shots > 0 else None


def _fraction_error(y: Array, shots: int | None) -> Array | None:
    """Binomial standard error of a fraction of ``shots``: sqrt(p (1 - p) / N)."""
    if shots is None or not np.all((y[np.isfinite(y)] >= 0) & (y[np.isfinite(y)] <= 1)):
        return None
    # A point at exactly 0 or 1 is not certain: (p + 1/N)-smoothing keeps its bar visible.
    p = np.clip(y, 0.5 / shots, 1 - 0.5 / shots)
    return np.sqrt(p * (1 - p) / shots)


def _mean_by_x(x: Array, y: Array) -> tuple[Array, Array, Array]:
    """Mean and standard error of ``y`` at each distinct ``x`` (ignoring NaNs)."""
    finite = np.isfinite(x) & np.isfinite(y)
    xs, where = np.unique(x[finite], return_inverse=True)
    n = np.bincount(where, minlength=xs.size).astype(float)
    total = np.bincount(where, weights=y[finite], minlength=xs.size)
    squares = np.bincount(where, weights=y[finite] ** 2, minlength=xs.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
        variance = np.where(n > 1, (squares - n * mean**2) / (n - 1), np.nan)
        error = np.sqrt(np.clip(variance, 0, None) / n)
    return xs, mean, error


def _parameter(start: Mapping[str, Any], parameter_id: str) -> Any:
    """A parameter's value in this run: its override, else its snapshot value."""
    level: Any = start.get("overrides") or {}
    for part in parameter_id.split("."):
        level = level.get(part) if isinstance(level, Mapping) else None
    if level is not None:
        return level
    level = start.get("parameters") or {}
    for part in parameter_id.split("."):
        level = level.get(part) if isinstance(level, Mapping) else None
    return level.get("value") if isinstance(level, Mapping) else None


FitModel = Callable[[Array, Mapping[str, float], Mapping[str, Any]], Array | None]


def _rabi_lineshape(x: Array, fit: Mapping[str, float], start: Mapping[str, Any]) -> Array | None:
    pulse_time = _parameter(start, "qubit.pi_time")
    if not _is_number(pulse_time):
        return None
    # The fit holds the Rabi frequency at what the pi time implies (ADR 0011) unless it stored one.
    rabi = fit.get("rabi_frequency", 1.0 / (2.0 * float(pulse_time)))
    return rabi_lineshape(x, fit["center"], rabi, float(pulse_time), fit["contrast"], fit["offset"])


def _damped_sine(x: Array, fit: Mapping[str, float], start: Mapping[str, Any]) -> Array | None:
    # No `tau`: the scan showed no decay and the fit has none (ADR 0011).
    return damped_sine(x, fit["frequency"], fit.get("tau", math.inf), fit["contrast"], fit["offset"], fit["phase"])


def _lorentzian(x: Array, fit: Mapping[str, float], start: Mapping[str, Any]) -> Array | None:
    return lorentzian(x, fit["center"], fit["fwhm"], fit["amplitude"], fit["offset"])


# A run stores its fit's values, not the model's name: the parameter names tell the
# models of `orchestrion.analysis` apart.
FIT_MODELS: dict[frozenset[str], tuple[str, FitModel]] = {
    frozenset({"center", "contrast", "offset"}): ("rabi_lineshape", _rabi_lineshape),
    frozenset({"frequency", "contrast", "offset", "phase"}): ("damped_sine", _damped_sine),
    frozenset({"center", "fwhm", "amplitude", "offset"}): ("lorentzian", _lorentzian),
}


def fit_parameters(fit: Mapping[str, float]) -> dict[str, tuple[float, float | None]]:
    """{name: (value, error)} from the flat ``name``/``name_err`` form runs store."""
    return {
        name: (value, fit.get(f"{name}_err"))
        for name, value in fit.items()
        if not name.endswith("_err")
    }  # fmt: skip


def fit_curve(run: RunData, x: Array) -> FitCurve | None:
    """The fitted model over the span of ``x``, if the fit's model is known."""
    parameters = fit_parameters(run.fit)
    finite = x[np.isfinite(x)]
    if not parameters or finite.size == 0:
        return None
    for names, (model, function) in FIT_MODELS.items():
        if names <= parameters.keys():
            grid = np.linspace(float(finite.min()), float(finite.max()), FIT_SAMPLES)
            y = function(grid, run.fit, run.start)
            if y is None:
                return None
            return FitCurve(model=model, x=grid, y=np.asarray(y, dtype=float), parameters=parameters)
    return None


def _histograms(run: RunData, signal: str) -> tuple[Histogram, ...]:
    device = signal.split("-", 1)[0]
    key = f"{device}{COUNTS_SUFFIX}"
    column = run.columns.get(key, [])
    # Counted once per point: a live run adds points, it never changes the ones it has.
    done, counts, shots, points = run.shot_counts.get(key, (0, np.zeros(0), 0, 0))
    new = [np.ravel(np.asarray(v, dtype=float)) for v in column[done:] if v is not None]
    if new:
        values = np.concatenate(new)
        values = values[np.isfinite(values) & (values >= 0)].astype(np.int64)
        more = np.bincount(values)
        size = max(counts.size, more.size)
        counts = np.pad(counts, (0, size - counts.size)) + np.pad(more, (0, size - more.size))
        shots, points = shots + values.size, points + len(new)
    run.shot_counts[key] = (len(column), counts, shots, points)
    if shots == 0:
        return ()
    threshold = _parameter(run.start, "detection.threshold")
    return (
        Histogram(
            label=f"{key}: {shots} shots of {points} points",
            edges=np.arange(-0.5, counts.size + 0.5, 1.0),
            counts=counts.astype(float),
            threshold=float(threshold) if _is_number(threshold) else None,
        ),
    )


def point_histogram(run: RunData, signal: str, index: int) -> Histogram | None:
    """The per-shot counts of one point (for the data page's selected point)."""
    device = signal.split("-", 1)[0]
    values = run.columns.get(f"{device}{COUNTS_SUFFIX}", [])
    if not 0 <= index < len(values) or values[index] is None:
        return None
    shots = np.ravel(np.asarray(values[index], dtype=float))
    edges = np.arange(-0.5, int(shots.max(initial=0)) + 1.5, 1.0)
    counts, _ = np.histogram(shots, bins=edges)
    threshold = _parameter(run.start, "detection.threshold")
    return Histogram(
        label=f"point {index}: {shots.size} shots",
        edges=edges,
        counts=counts.astype(float),
        threshold=float(threshold) if _is_number(threshold) else None,
    )


def _grid(axes: Sequence[Axis], x: Array, y: Array, signal: Array) -> Image:
    """Mean signal per (outer, inner) grid cell; the first axis is outermost (rows)."""
    outer, inner = axes[0], axes[1]
    rows = np.unique(np.asarray(outer.values, dtype=float))
    cols = np.unique(np.asarray(inner.values, dtype=float))
    sums = np.zeros((rows.size, cols.size))
    counts = np.zeros((rows.size, cols.size))
    for xo, xi, value in zip(x, y, signal, strict=True):
        if not (np.isfinite(xo) and np.isfinite(xi) and np.isfinite(value)):
            continue
        r = int(np.argmin(np.abs(rows - xo)))
        c = int(np.argmin(np.abs(cols - xi)))
        sums[r, c] += value
        counts[r, c] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return Image(x_axis=inner, y_axis=outer, x=cols, y=rows, values=values)


def plot_run(run: RunData) -> RunPlot:
    """What to draw for ``run``, with the points it has so far."""
    axes = scan_axes(run.start, run.units)
    signal = measured_signal(run, axes) or ""
    title = f"{run.start.get('experiment', run.start.get('plan_name', 'run'))}  {run.uid[:8]}"
    if run.start.get("scan_id") is not None:
        title += f"  scan {run.start['scan_id']}"
    if run.start.get("job_id") is not None:
        title += f"  job {run.start['job_id']}"
    y = _column(run, signal) if signal else np.array([])
    x_key = axes[0].key if axes else POINT_KEY
    x = _column(run, x_key)
    if x.size != y.size:
        x = np.arange(y.size, dtype=float)
    repetitions = _column(run, REPETITION_KEY)
    if repetitions.size != y.size:
        repetitions = np.zeros(y.size)
    curves: list[Curve] = []
    image: Image | None = None
    if len(axes) >= 2:
        image = _grid(axes, x, _column(run, axes[1].key), y)
    else:
        shots = _shots(run)
        distinct = [r for r in np.unique(repetitions) if np.isfinite(r)]
        for rep in distinct:
            mine = repetitions == rep
            order = np.argsort(x[mine], kind="stable")
            xr, yr = x[mine][order], y[mine][order]
            err = _fraction_error(yr, shots)
            label = f"repetition {int(rep) + 1}" if len(distinct) > 1 else signal
            curves.append(Curve(label=label, x=xr, y=yr, yerr=err))
        if len(distinct) > 1:
            xm, ym, em = _mean_by_x(x, y)
            curves.append(Curve(label="average", x=xm, y=ym, yerr=em, averaged=True))
    fit = fit_curve(run, x) if axes and image is None else None
    unit = run.units.get(signal, "")
    return RunPlot(
        title=title,
        axes=axes,
        signal=signal,
        signal_label=f"{signal} ({unit})" if unit else signal,
        curves=tuple(curves),
        image=image,
        histograms=_histograms(run, signal) if signal else (),
        fit=fit,
        points=run.points,
        expected_points=run.expected_points,
    )
