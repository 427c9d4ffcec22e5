"""Running an experiment: validate, snapshot parameters, pre-process, drive the hardware."""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import secrets
import time
from collections import ChainMap
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Location, Triggerable, WritesStreamAssets
from bluesky.utils import Msg, MsgGenerator, all_safe_rewind, separate_devices
from ophyd_async.core import SignalR, StandardReadable, StandardReadableFormat, soft_signal_r_and_setter
from ophyd_async.plan_stubs import ensure_connected
from pydantic import ValidationError

import orchestrion
from orchestrion.config import OrchestrionConfig
from orchestrion.devices import DeviceRegistry, ReadoutRole
from orchestrion.errors import (
    DeviceError,
    InputError,
    OrchestrionError,
    ParameterError,
    PreprocessingError,
    ScanSpecError,
    did_you_mean,
    quoted,
)
from orchestrion.parameters import ParameterValue, ParameterValueType
from orchestrion.schema import (
    ANALYSIS,
    BASELINE,
    JOB_ID_KEY,
    PARAMETERS_AT,
    PARAMETERS_READ,
    POINT_SEQUENCE_KEY_MD,
    PREPARED_AHEAD,
    PRIMARY,
    SEQUENCES,
    UNITS_MD,
    id_to_data_key,
)
from orchestrion.sequence import PulseSequence, SequenceError, as_sequence_error
from orchestrion.times import parse_time

from ._context import LabContext, active_starts
from ._experiment import Experiment, ExperimentResult
from ._preprocess import Preprocessor
from ._request import RunRequest
from ._scan import Linspace, Scan, ScanAxis, ScanPattern, ScanPoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AxisTarget:
    """Where a scan axis lands: a stored parameter, or a device set before each point."""

    axis: ScanAxis
    device: Any | None  # None: a stored parameter, overridden point by point

    @property
    def kind(self) -> str:
        return "parameter" if self.device is None else "device"


@dataclass(frozen=True)
class RunLimits:
    """The largest run a lab accepts (`OrchestrionConfig.max_run_points` and its neighbours).

    A request beyond one of them is refused at once, before anything is opened: a
    hundred million points would otherwise grow the process until the kernel kills it.
    """

    points: int
    memory_mb: float
    """Megabytes (10**6 bytes) that the run's readings may hold in the RunEngine's process."""
    duration: float
    """Seconds of pulse sequences (shots x sequence duration x points)."""

    @classmethod
    def of(cls, config: OrchestrionConfig) -> RunLimits:
        return cls(config.max_run_points, config.max_run_memory_mb, config.max_run_duration)


# What a run holds per point until its fit (`ExperimentResult`: the point and its
# reading) and what the RunEngine, the summaries and the hand-over keep on the way,
# measured with tracemalloc on 2,000-6,000-point spectroscopy runs: about 7.8 kB per
# point at 100 shots, 8 bytes more per shot (the counts).
POINT_BYTES = 7_000
SHOT_BYTES = 8


@dataclass(frozen=True)
class RunEstimate:
    """How large a run will be, known before it starts."""

    points: int
    memory_mb: float
    duration: float | None
    """Seconds of pulse sequences; None if the first sequences could not be compiled yet."""


@dataclass(frozen=True)
class PreparedRun:
    """A `RunRequest` checked against the experiment, the lab and its limits: nothing moved yet.

    Its points are made as the run visits them (`points`), never held as a list.
    """

    experiment: Experiment
    axes: tuple[AxisTarget, ...]
    overrides: Mapping[str, ParameterValueType]
    device_settings: Mapping[str, tuple[Any, float]]
    shots: int
    scan: Scan
    estimate: RunEstimate

    @property
    def repetitions(self) -> int:
        return self.scan.repetitions

    @property
    def pattern(self) -> ScanPattern:
        return self.scan.pattern

    @property
    def seed(self) -> int:
        return self.scan.seed

    @property
    def num_points(self) -> int:
        return self.scan.num_points

    def points(self) -> Iterator[ScanPoint]:
        """Every point of the run, in order, made one at a time (the same points on every call)."""
        return self.scan.points()

    def describe(self) -> dict[str, Any]:
        return {
            "axes": [{"id": t.axis.id, "kind": t.kind, "values": list(t.axis.values)} for t in self.axes],
            "pattern": self.pattern.value,
            "repetitions": self.repetitions,
            "shots": self.shots,
            "seed": self.seed,
            "num_points": self.num_points,
        }


def prepare_run(
    experiment: Experiment,
    devices: DeviceRegistry,
    request: RunRequest,
    *,
    limits: RunLimits,
    parameters: Mapping[str, ParameterValueType] | None = None,
    seed: int | None = None,
    refresh: bool = True,
) -> PreparedRun:
    """Check a run request completely, before any hardware moves.

    Raises one `InputError` that names the problem: an unknown or out-of-bounds
    parameter, a malformed scan, a device that cannot take the value, a run larger than
    ``limits``.  Override values may be typed values or text from a command line.
    ``parameters`` are the values the run's sequences will be compiled from (its
    snapshot); without them the declared defaults stand in, to estimate the duration.
    ``refresh=False`` takes the devices as last refreshed (`start_run` refreshes them).
    """
    if request.experiment != experiment.name:
        raise InputError(f"the request is for {quoted(request.experiment)}, not '{experiment.name}'")
    pattern = ScanPattern.parse(request.pattern)
    shots = experiment.default_shots if request.shots is None else request.shots
    repetitions = request.repetitions
    if not isinstance(shots, int) or isinstance(shots, bool) or not 1 <= shots <= 100_000:
        raise InputError(f"shots must be a whole number from 1 to 100000, not {shots!r}")
    if not isinstance(repetitions, int) or isinstance(repetitions, bool) or repetitions < 1:
        raise InputError(f"repetitions must be a whole number of at least 1, not {repetitions!r}")

    # An operator may have switched a device off since the lab opened: refuse here,
    # naming it, rather than fail at the hardware.
    if refresh:
        devices.refresh()
    devices.require([experiment.sequencer], by=f"experiment '{experiment.name}'")
    given = None if request.scan is None else tuple(ScanAxis.parse(text) for text in request.scan)
    axes = experiment.default_scans if given is None else given
    scan = Scan(axes, pattern, repetitions, secrets.randbits(32) if seed is None else seed)
    # Sizes first: nothing below may walk the axes of a scan too large to run.
    memory_mb = _check_size(experiment, scan, shots, limits)
    targets = tuple(_axis_target(experiment, devices, axis) for axis in axes)

    checked_overrides: dict[str, ParameterValueType] = {}
    device_settings: dict[str, tuple[Any, float]] = {}
    for parameter_id, raw in (request.parameters or {}).items():
        spec = experiment.spec(parameter_id)
        if spec is not None:
            checked_overrides[parameter_id] = spec.parse_text(raw) if isinstance(raw, str) else spec.validate_value(raw)
            continue
        _require_device_of(devices, parameter_id, f"--set '{parameter_id}'")
        device = devices.resolve_settable(parameter_id)
        if device is None:
            raise ParameterError(
                f"experiment '{experiment.name}' reads no parameter {quoted(parameter_id)}"
                + did_you_mean(parameter_id, [*experiment.parameter_ids, *_settable_ids(devices)])
            )
        device_settings[parameter_id] = (device, _device_value(parameter_id, device, raw))
    settings = {**checked_overrides, **{k: v for k, (_, v) in device_settings.items()}}
    _check_not_scanned(experiment, given, scan, settings)

    values = {**(_defaults(experiment) if parameters is None else parameters), **checked_overrides}
    duration = _estimate_duration(experiment, scan, targets, values, shots, strict=parameters is not None)
    if duration is not None and duration > limits.duration:
        raise InputError(
            f"{experiment.name}: the run would take about {_span(duration)} of pulse sequences "
            f"({scan.num_points:,} points of about {_span(duration / scan.num_points)}), "
            f"above the limit max_run_duration = {limits.duration:g} s ({_span(limits.duration)})"
        )
    return PreparedRun(
        experiment,
        targets,
        checked_overrides,
        device_settings,
        shots,
        scan,
        RunEstimate(scan.num_points, memory_mb, duration),
    )


def _check_size(experiment: Experiment, scan: Scan, shots: int, limits: RunLimits) -> float:
    """The run's memory estimate (MB), once its points and memory are within the limits."""
    points = scan.num_points
    shape = " x ".join(f"{len(axis):,}" for axis in scan.axes) or "1"
    if scan.repetitions > 1:
        shape += f" x {scan.repetitions:,} repetitions"
    if points > limits.points:
        raise InputError(
            f"{experiment.name}: the run has {points:,} points ({shape}), "
            f"above the limit max_run_points = {limits.points:,}"
        )
    memory_mb = points * (POINT_BYTES + SHOT_BYTES * shots) / 1e6
    if memory_mb > limits.memory_mb:
        raise InputError(
            f"{experiment.name}: the run would hold about {memory_mb:,.0f} MB of readings "
            f"({points:,} points of {shots} shots), above the limit max_run_memory_mb = {limits.memory_mb:g}"
        )
    return memory_mb


def _check_not_scanned(
    experiment: Experiment, given: Sequence[ScanAxis] | None, scan: Scan, settings: Mapping[str, Any]
) -> None:
    """Refuse a value set for a parameter the scan varies, saying how to run at that one value."""
    clash = sorted({axis.id for axis in scan.axes} & set(settings))
    if not clash:
        return
    parameter_id = clash[0]
    if given is not None:
        raise InputError(f"parameter '{parameter_id}' is both scanned and set")
    # The user asked for no scan: the experiment's default scan varies this parameter.
    value = settings[parameter_id]
    alone = [f"{parameter_id}={value:g}" if axis.id == parameter_id else axis.spec_text() for axis in scan.axes]
    default = " and ".join(axis.spec_text() for axis in scan.axes)
    raise InputError(
        f"{experiment.name}'s default scan varies '{parameter_id}' ({default}), so it cannot also be set; "
        f"to run at {value:g} alone, scan that one value: {' '.join(f'--scan {a}' for a in alone)}"
    )


def _defaults(experiment: Experiment) -> dict[str, ParameterValueType]:
    return {spec.id: spec.default for spec in experiment.parameters}


def _estimate_duration(
    experiment: Experiment,
    scan: Scan,
    targets: Sequence[AxisTarget],
    values: Mapping[str, ParameterValueType],
    shots: int,
    *,
    strict: bool,
) -> float | None:
    """Seconds of pulse sequences the run will play: its points times the mean of the grid's corners.

    Sequence length varies along a scan (a Rabi or Ramsey scan's pulse or wait), and
    roughly linearly, so the mean of the first and the last grid point stands for all.
    With the declared defaults (``strict`` false) a sequence that does not compile
    leaves the estimate to the run itself, which compiles from the stored values.
    """
    parameter_axes = {t.axis.id for t in targets if t.device is None}
    durations: list[float] = []
    for corner in scan.corners():
        point_values = {pid: v for pid, v in corner.items() if pid in parameter_axes}
        try:
            durations.append(_compile_sequence(experiment, {**values, **point_values}, shots).duration)
        except SequenceError as exc:
            if strict:
                raise InputError(f"{experiment.name}: {exc}") from None
            return None
    return scan.num_points * sum(durations) / len(durations)


def _compile_sequence(experiment: Experiment, values: Mapping[str, Any], shots: int) -> PulseSequence:
    """One point's sequence; a compiler's own validation error becomes a `SequenceError`."""
    try:
        return experiment.build_sequence(values, shots)
    except ValidationError as exc:  # a compiler that builds models directly
        raise as_sequence_error(exc) from None


def _span(seconds: float) -> str:
    """A duration for people: '42 ms', '3.5 min', '11.6 days'."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds * 1e3:.3g} ms"


def _settable_ids(devices: DeviceRegistry) -> list[str]:
    """Ids of the lab's device parameters that a scan or a setting can take ('rf.frequency')."""
    ids: list[str] = []

    def walk(prefix: str, device: Any, depth: int) -> None:
        if devices.resolve_settable(prefix) is not None:
            ids.append(prefix)
        children = getattr(device, "children", None)
        if depth > 0 and callable(children):
            for name, child in children():
                walk(f"{prefix}.{name}", child, depth - 1)

    for lab_device in devices:
        walk(lab_device.name, lab_device.device, 2)
    return ids


def _axis_target(experiment: Experiment, devices: DeviceRegistry, axis: ScanAxis) -> AxisTarget:
    spec = experiment.spec(axis.id)
    if spec is not None:
        if spec.type.value not in ("int", "float"):
            raise ScanSpecError(f"scan '{axis.id}': a {spec.type.value} parameter cannot be scanned")
        # Bounds are an interval: an evenly spaced float axis is inside when its ends are.
        ends = spec.type.value == "float" and spec.allowed is None and isinstance(axis.values, Linspace)
        for value in (axis.values[0], axis.values[-1]) if ends else axis.values:
            spec.validate_value(value)
        return AxisTarget(axis, None)
    _require_device_of(devices, axis.id, f"scan '{axis.id}'")
    device = devices.resolve_settable(axis.id)
    if device is None:
        raise ScanSpecError(
            f"scan {quoted(axis.id)}: neither a parameter of '{experiment.name}' nor a settable device parameter"
            + did_you_mean(axis.id, [*experiment.parameter_ids, *_settable_ids(devices)])
        )
    for value in axis.values:
        _device_value(axis.id, device, value)
    return AxisTarget(axis, device)


def _require_device_of(devices: DeviceRegistry, parameter_id: str, by: str) -> None:
    name = devices.device_of(parameter_id)
    if name is not None:
        devices.require([name], by=by)


def _device_value(parameter_id: str, device: Any, raw: Any) -> float:
    shown = quoted(raw) if isinstance(raw, str) else repr(raw)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ParameterError(f"{parameter_id}: {shown} is not a number") from None
    if not math.isfinite(value):
        raise ParameterError(f"{parameter_id}: {shown} is not a finite number")
    check = getattr(device, "check_value", None)
    # An asynchronous check (ophyd-async's movables read their limits from the hardware)
    # runs in the move itself; a synchronous one is asked here, before anything moves.
    if callable(check) and not inspect.iscoroutinefunction(check):
        try:
            check(value)
        except ValueError as exc:
            raise ParameterError(f"{parameter_id}: {exc}") from None
    return value


class ScanPointInfo(StandardReadable):
    """Which point an event belongs to, and the stored-parameter values scanned there."""

    def __init__(self, axes: Sequence[tuple[ScanAxis, str]], name: str = "point") -> None:
        self._setters: dict[str, Callable[[float], None]] = {}
        # Read in every event but not hinted: plots and tables show the measured values
        # against the scanned ones, not the point's bookkeeping.
        with self.add_children_as_readables(StandardReadableFormat.UNCACHED_SIGNAL):
            self.index, self._set_index = soft_signal_r_and_setter(int)
            self.repetition, self._set_repetition = soft_signal_r_and_setter(int)
        with self.add_children_as_readables(StandardReadableFormat.HINTED_UNCACHED_SIGNAL):
            for axis, unit in axes:
                parameter_id = axis.id
                signal, setter = soft_signal_r_and_setter(float, units=unit, precision=_precision(axis.values))
                setattr(self, data_key_suffix(parameter_id), signal)
                self._setters[parameter_id] = setter
        super().__init__(name=name)

    def show(self, point: ScanPoint) -> None:
        self._set_index(point.index)
        self._set_repetition(point.repetition)
        for parameter_id, setter in self._setters.items():
            setter(point.values[parameter_id])


class SequenceRecord(StandardReadable):
    """Each distinct pulse sequence of a run, once, in the "sequences" stream (for the file)."""

    def __init__(self, name: str = "sequence") -> None:
        with self.add_children_as_readables():
            self.hash, self._set_hash = soft_signal_r_and_setter(str)
            self.json, self._set_json = soft_signal_r_and_setter(str)
        super().__init__(name=name)

    def show(self, sequence: PulseSequence) -> None:
        self._set_hash(sequence.content_hash)
        self._set_json(sequence.to_json())


class AnalysisResults(StandardReadable):
    """Fit results, emitted once at the end of a run in the 'analysis' stream."""

    def __init__(self, results: Mapping[str, float], name: str = "fit") -> None:
        with self.add_children_as_readables():
            for key, value in results.items():
                signal, setter = soft_signal_r_and_setter(float)
                setter(float(value))
                setattr(self, key, signal)
        super().__init__(name=name)


def _precision(values: Sequence[float]) -> int:
    """Decimal places that tell neighbouring scan values apart (for tables and plots)."""
    steps = [abs(b - a) for a, b in itertools.pairwise(sorted(set(values))) if b != a]
    smallest = min(steps) if steps else max((abs(v) for v in values), default=1.0) or 1.0
    return max(0, min(12, 1 - math.floor(math.log10(smallest))))


def nest_by_id(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'qubit.frequency': x} -> {'qubit': {'frequency': x}}."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *namespaces, name = dotted.split(".")
        level = nested
        for part in namespaces:
            level = level.setdefault(part, {})
        level[name] = value
    return nested


def flatten_ids(nested: Mapping[str, Any], is_leaf: Callable[[Any], bool]) -> dict[str, Any]:
    """Inverse of `nest_by_id`, for leaves recognised by ``is_leaf``."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if is_leaf(value):
            flat[key] = value
        else:
            flat.update({f"{key}.{sub}": v for sub, v in flatten_ids(value, is_leaf).items()})
    return flat


def data_key_suffix(parameter_id: str) -> str:
    """Parameter ids carry dots; event-model data keys should not (`schema.id_to_data_key`)."""
    return id_to_data_key(parameter_id)


def read_parameters(experiment: Experiment, lab: LabContext, at: object) -> dict[str, ParameterValue]:
    """The run's parameter snapshot, in one read.

    Without ``at``: every parameter at its latest.  With ``at`` (a queued job's
    submission time, ICON's rule): the experiment's own parameters ('spectroscopy.*') as
    they were then, so later edits do not change a job already accepted, and the shared
    ones (qubit, detection, ...) at their latest, so a calibration that ran in between
    is used.
    """
    if at is None:
        return lab.parameters.snapshot(experiment.parameter_ids)
    moment = parse_time(str(at), f"metadata {PARAMETERS_AT}")
    own = f"{experiment.name}."
    shared = [pid for pid in experiment.parameter_ids if not pid.startswith(own)]
    return lab.parameters.snapshot(experiment.parameter_ids, at=moment, latest=shared)


def set_with_readback(target_id: str, device: Any, value: float, retries: int) -> MsgGenerator[float]:
    """Set a device parameter, read it back, retry while it is out of tolerance."""
    tolerance = yield from _tolerance(device)
    readback = math.nan
    for attempt in range(1, retries + 1):
        yield from move(device, value)
        location: Location[float] = yield Msg("locate", device, squeeze=True)
        readback = float(location["readback"])
        if abs(readback - value) <= tolerance:
            return readback
        logger.warning(
            "%s: read back %g after setting %g (attempt %d of %d)", target_id, readback, value, attempt, retries
        )
    raise DeviceError(f"{target_id}: read back {readback:g} after setting {value:g}, {retries} attempts")


_uids = itertools.count()


def _unique(prefix: str) -> str:
    """A group name no other message of this process uses."""
    return f"orchestrion-{prefix}-{next(_uids)}"


# A run's points are driven with plain messages, not with bluesky's plan stubs: each stub
# call is a `bluesky.utils.Plan`, which formats the whole call stack when it is made
# (to warn of a stub never iterated), and under a run's wrappers that cost the
# RunEngine's thread about 3 ms a point while the hardware waited (ADR 0820).


def move(device: Any, value: Any) -> MsgGenerator[None]:
    """``bps.mv(device, value)``: set, and wait for the set to finish."""
    group = _unique("set")
    yield Msg("set", device, value, group=group)
    yield Msg("wait", None, group=group)


def read_event(devices: Sequence[Any], name: str) -> MsgGenerator[dict[str, Any]]:
    """The read half of ``bps.trigger_and_read(devices, name)``: one event of ``devices``'
    readings in stream ``name`` (the bundle dropped if a read fails); the readings."""
    yield Msg("create", None, name=name)
    readings: dict[str, Any] = {}
    try:
        for device in devices:
            reading = yield Msg("read", device)
            if reading is not None:
                readings.update(reading)
    except Exception:
        yield Msg("drop")
        raise
    yield Msg("save")
    return readings


def _tolerance(device: Any) -> MsgGenerator[float]:
    """How far a read-back may be from its target: the device's `tolerance`, or the
    retry deadband of an EPICS motor record (`ophyd_async.epics.motor.Motor`)."""
    tolerance = getattr(device, "tolerance", None)
    if tolerance is None and isinstance(getattr(device, "deadband", None), SignalR):
        tolerance = yield from bps.rd(device.deadband)
    return float(tolerance or 0.0)


@dataclass(frozen=True)
class RunStart:
    """What a run needs before it opens: its parameter snapshot, its checked request, its first sequences.

    Made at the run's start, or ahead, while the job before it runs (`start_run`,
    ADR 0313); ``mark`` and ``devices`` say what it was made from, to tell whether it
    still holds.
    """

    request: RunRequest
    snapshot: Mapping[str, ParameterValue]
    prepared: PreparedRun
    ready: Mapping[int, PulseSequence]
    """Compiled sequences by point index: the first point's, and with ``lookahead`` the next ones'."""
    read_at: float
    """When the snapshot was read (epoch seconds)."""
    mark: Hashable | None
    """The parameter store's `change_mark` just before the snapshot was read."""
    devices: tuple[tuple[str, str, str], ...]
    """The lab's devices as the request was checked against: name, state, switch."""
    ahead: bool = False

    @property
    def stored(self) -> dict[str, ParameterValueType]:
        return {pid: v.value for pid, v in self.snapshot.items()}

    @property
    def values(self) -> dict[str, ParameterValueType]:
        """What the sequences are compiled from: the stored values and the run's overrides."""
        return {**self.stored, **self.prepared.overrides}

    @property
    def first(self) -> PulseSequence:
        return self.ready[next(self.prepared.points()).index]


def device_state(devices: DeviceRegistry) -> tuple[tuple[str, str, str], ...]:
    """What of the lab's devices a checked request depends on: which are there and usable."""
    return tuple((d.name, str(d.state), repr(d.switch)) for d in devices)


def start_run(
    experiment: Experiment,
    lab: LabContext,
    run: RunRequest,
    *,
    seed: int | None = None,
    lookahead: int = 0,
    refresh_devices: bool = True,
) -> RunStart:
    """Snapshot the parameters, check the request (`prepare_run`), compile the first point's sequence.

    Raises `InputError` for a request that cannot run.  ``lookahead`` more points are
    compiled too, as far as they compile (a point that does not is left to the run,
    which reports it at that point).  ``refresh_devices=False`` checks against the
    devices as last refreshed, for a preparation off the RunEngine's thread that must
    not change what the running run sees.
    """
    if refresh_devices:
        lab.devices.refresh()
    devices = device_state(lab.devices)
    mark = lab.parameters.change_mark()
    read_at = time.time()
    snapshot = read_parameters(experiment, lab, run.md.get(PARAMETERS_AT))
    stored: dict[str, ParameterValueType] = {pid: v.value for pid, v in snapshot.items()}
    request = prepare_run(
        experiment, lab.devices, run, limits=RunLimits.of(lab.config), parameters=stored, seed=seed, refresh=False
    )
    compile_point = _point_compiler(experiment, request, {**stored, **request.overrides})
    points = request.points()
    first_point = next(points)
    try:
        ready = {first_point.index: compile_point(first_point)}
    except SequenceError as exc:
        raise InputError(f"{experiment.name}: {exc}") from None
    for point in itertools.islice(points, lookahead):
        try:
            ready[point.index] = compile_point(point)
        except SequenceError:
            break
    return RunStart(run, snapshot, request, ready, read_at, mark, devices)


def _point_compiler(
    experiment: Experiment, request: PreparedRun, values: dict[str, ParameterValueType]
) -> Callable[[ScanPoint], PulseSequence]:
    """A point's sequence: its scanned stored-parameter values over the run's ``values``."""
    parameter_axes = [t.axis.id for t in request.axes if t.device is None]

    def compile_point(point: ScanPoint) -> PulseSequence:
        point_values = {pid: point.values[pid] for pid in parameter_axes}
        return _compile_sequence(experiment, ChainMap(point_values, values), request.shots)

    return compile_point


def run_experiment(
    experiment: Experiment, lab: LabContext, run: RunRequest, *, seed: int | None = None
) -> MsgGenerator[ExperimentResult]:
    """Run ``experiment`` on the lab: one event per point in 'primary', fits in 'analysis'.

    Everything is validated and the first sequence compiled before the run opens; a bad
    request raises `InputError` and no hardware moves.
    """
    job_id = run.md.get(JOB_ID_KEY)
    starts = active_starts() if isinstance(job_id, int) and seed is None else None
    # A job's run may have been prepared while the job before it ran (ADR 0313): used
    # only if nothing it was made from has changed since.
    start = starts.take(job_id, experiment, run) if starts is not None and isinstance(job_id, int) else None
    if start is None:
        start = start_run(experiment, lab, run, seed=seed)
    snapshot, request, first = start.snapshot, start.prepared, start.first
    values = start.values
    compile_point = _point_compiler(experiment, request, values)

    # Split once: stored-parameter axes feed the compiler, device axes are set on devices.
    parameter_targets = [t for t in request.axes if t.device is None]
    device_axes = [t for t in request.axes if t.device is not None]
    parameter_axes = [t.axis.id for t in parameter_targets]
    # The next job is prepared once this run's first points are done (the pool's first
    # burst is over) and looked at again before the last point (a job of higher priority
    # may have come meanwhile): while points are still to come, so that the preparation
    # fills the time the RunEngine waits for the hardware.  Never after the last point:
    # there it would only compete with this run's close and the next run's open for the
    # GIL (a one-point job's successor is prepared at its claim, as before; ADR 0313).
    last = request.num_points - 1
    prepare_next_at = {max(1, min(lab.config.preprocess_lookahead, last)), last} if last >= 1 else set()

    sequencer = lab.devices.usable(experiment.sequencer)
    point_info = ScanPointInfo([(t.axis, _unit(experiment, t.axis.id)) for t in parameter_targets])
    monitored = [d for d in lab.devices.with_role(ReadoutRole.MONITORED) if d is not sequencer]
    detectors = [sequencer, point_info, *(t.device for t in device_axes), *monitored]
    retries = lab.config.setpoint_retries

    hinted = [f"point-{data_key_suffix(a)}" for a in parameter_axes] + [_hinted_key(t.device) for t in device_axes]
    start_md: dict[str, Any] = {
        "plan_name": experiment.name,
        "experiment": experiment.name,
        "description": experiment.description,
        "num_points": request.num_points,
        "scan": request.describe(),
        # Event-model metadata keys may not contain dots: ids nest by namespace.
        "parameters": nest_by_id(
            {
                pid: {"value": v.value, "timestamp": v.timestamp.isoformat(), "source": v.source}
                for pid, v in snapshot.items()
            }
        ),
        "overrides": nest_by_id(dict(request.overrides)),
        "device_settings": nest_by_id({k: v for k, (_, v) in request.device_settings.items()}),
        "first_sequence_hash": first.content_hash,
        PARAMETERS_READ: datetime.fromtimestamp(start.read_at, UTC).isoformat(),
        PREPARED_AHEAD: start.ahead,
        POINT_SEQUENCE_KEY_MD: getattr(getattr(sequencer, "sequence_hash", None), "name", None),
        UNITS_MD: nest_by_id({spec.id: spec.unit for spec in experiment.parameters if spec.unit}),
        "orchestrion_version": orchestrion.__version__,
        "hints": {"dimensions": [([key], PRIMARY) for key in hinted] or [(["point-index"], PRIMARY)]},
    }
    start_md.update(run.md)

    result = ExperimentResult(run_uid="", points=[], readings=[], analysis={}, parameters_written={})

    # What `bps.trigger_and_read(detectors)` would trigger and read, worked out once.
    readables = separate_devices(detectors)
    triggerables = [device for device in readables if isinstance(device, Triggerable)]
    rewindable = all_safe_rewind(readables)
    record, recorded = SequenceRecord(), set[str]()

    def measure(index: int, sequence: PulseSequence) -> MsgGenerator[dict[str, Any]]:
        """Point ``index``: trigger the detectors; once they are triggered, the next
        compilation handed to the pool and the sequence's record (the first time it is
        played); then the point's event.

        The documents are those of ``trigger_and_read([record], name=SEQUENCES)`` then
        ``trigger_and_read(detectors, name=PRIMARY)``, in that order; only the record is
        read after the trigger is sent rather than before (ADR 0820).
        """
        group = _unique("trigger")
        for device in triggerables:
            yield Msg("trigger", device, group=group)
        preprocessor.look_ahead(index)
        digest = sequence.content_hash
        if digest not in recorded:
            recorded.add(digest)
            record.show(sequence)
            yield from read_event([record], SEQUENCES)
        if triggerables:
            yield Msg("wait", None, group=group)
        return (yield from read_event(readables, PRIMARY))

    def measured(index: int, sequence: PulseSequence) -> MsgGenerator[dict[str, Any]]:
        if rewindable:
            return measure(index, sequence)
        # Detectors that may not be triggered again on resume, as `trigger_and_read` has it.
        return bpp.rewindable_wrapper(measure(index, sequence), False)  # type: ignore[no-any-return]

    def points_plan() -> MsgGenerator[None]:
        yield from ensure_connected(point_info)
        yield from ensure_connected(record)
        for setting_id, (device, value) in request.device_settings.items():
            yield from set_with_readback(setting_id, device, value, retries)
        for point in request.points():
            # A checkpoint per point: a deferred pause (Ctrl-C once) stops here, and
            # resuming repeats at most the current point.
            yield Msg("checkpoint")
            try:
                sequence = yield from preprocessor.sequence_for(point.index, look_ahead=False)
            except SequenceError as exc:
                raise InputError(f"{experiment.name}, point {point.index}: {exc}") from None
            except PreprocessingError as exc:
                raise PreprocessingError(f"{experiment.name}, {exc} ({len(result.points)} points kept)") from exc
            try:
                for target in device_axes:
                    axis_id = target.axis.id
                    yield from set_with_readback(axis_id, target.device, point.values[axis_id], retries)
                point_info.show(point)
                yield from move(sequencer.program, sequence.to_json())
                reading = yield from measured(point.index, sequence)
            except OrchestrionError:
                raise
            except Exception as exc:
                # A device that stopped answering (an IOC gone, a cable pulled): the
                # run fails naming it; the points read so far are in the run.
                culprit = lab.devices.blame(exc)
                if culprit is None:
                    raise
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if isinstance(exc, TimeoutError):
                    detail = f"no answer in time ({detail})"
                raise DeviceError(
                    f"device '{culprit}' failed at point {point.index} ({len(result.points)} points kept): {detail}"
                ) from exc
            result.points.append(point)
            result.readings.append({k: r["value"] for k, r in reading.items()})
            if starts is not None and len(result.points) in prepare_next_at:
                starts.under_way()
        if experiment.analyze is not None:
            fit = experiment.analyze(result.points, result.readings, values)
            if fit:
                result.analysis = dict(fit)
                analysis_device = AnalysisResults(result.analysis)
                yield from ensure_connected(analysis_device)
                yield from bps.trigger_and_read([analysis_device], name=ANALYSIS)

    # The pool starts on the first points while the run opens and reads its baseline, so
    # the hardware does not wait for it (nor for its worker processes to start) then.
    preprocessor = Preprocessor(
        compile_point,
        request.points(),
        lookahead=lab.config.preprocess_lookahead,
        workers=lab.config.preprocess_workers,
        ready=start.ready,  # compiled before the run opened (the first to refuse a bad one): not again
        processes=lab.config.preprocess_processes,
    )

    def primed(plan: MsgGenerator[str]) -> MsgGenerator[str]:
        preprocessor.prime()
        return (yield from plan)

    def release() -> MsgGenerator[None]:
        preprocessor.close()
        yield from bps.null()

    # The baseline and monitor wrappers act on the open_run/close_run messages, so they
    # must wrap the run, not the plan inside it.
    plan: MsgGenerator[str] = bpp.run_wrapper(points_plan(), md=start_md)
    # File-writing detectors (ophyd-async StandardDetector) staged around the run, as
    # bluesky's plans stage their detectors: one opens its file when first triggered and
    # closes it only when unstaged; never unstaged, its file stayed open for writing and
    # no plain reader could follow the run file's link to it.  Only those: staging a
    # StandardReadable (the sequencer) would make its signals serve cached values.
    writers = [d for d in lab.devices.with_role(ReadoutRole.MONITORED) if isinstance(d, WritesStreamAssets)]
    if writers:
        # Where they write (their path providers' `${detectors_dir}`), made before the
        # first opens a file; the catalog, which makes it too, opens in the post-processing
        # process, perhaps later.
        lab.config.detectors_dir.mkdir(parents=True, exist_ok=True)
        plan = bpp.stage_wrapper(plan, writers)
    baseline = lab.devices.with_role(ReadoutRole.BASELINE)
    if baseline:
        plan = baseline_readings(plan, baseline, lab.devices.blame)
    monitors = lab.devices.async_signals()
    if monitors:
        plan = bpp.monitor_during_wrapper(plan, monitors)
    result.run_uid = yield from bpp.finalize_wrapper(primed(plan), release)

    for result_key, parameter_id in experiment.calibrates.items():
        if result_key in result.analysis:
            source = f"{experiment.name} run {result.run_uid}"
            result.parameters_written[parameter_id] = lab.parameters.set(
                parameter_id, result.analysis[result_key], source=source
            )
            logger.info("%s: wrote %s = %r", experiment.name, parameter_id, result.analysis[result_key])
    return result


def baseline_readings(
    plan: MsgGenerator[str], devices: Sequence[Any], blame: Callable[[BaseException], str | None]
) -> MsgGenerator[str]:
    """bluesky's `baseline_wrapper`, with a baseline device that cannot be read at the
    close named: it fails a run that was going to succeed, and is logged where the run
    already failed (that failure, the one that stopped the scan, is what it reports)."""

    def opening() -> MsgGenerator[None]:
        yield from bps.declare_stream(*devices, name=BASELINE)
        yield from bps.trigger_and_read(devices, name=BASELINE)

    def insert(msg: Msg) -> tuple[MsgGenerator[Any] | None, MsgGenerator[Any] | None]:
        if msg.command == "open_run":
            return None, opening()
        if msg.command != "close_run":
            return None, None

        def closing() -> MsgGenerator[Any]:
            try:
                yield from bps.trigger_and_read(devices, name=BASELINE)
            except Exception as exc:
                culprit = blame(exc)
                if culprit is None:
                    raise
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                error = DeviceError(f"baseline device '{culprit}' could not be read at the end of the run: {detail}")
                if msg.kwargs.get("exit_status") not in (None, "success"):
                    logger.warning("%s", error)
                    return (yield msg)
                yield Msg("close_run", exit_status="fail", reason=str(error))
                raise error from exc
            return (yield msg)

        return closing(), None

    run_uid: str = yield from bpp.plan_mutator(plan, insert)
    return run_uid


def _unit(experiment: Experiment, parameter_id: str) -> str:
    spec = experiment.spec(parameter_id)
    return spec.unit if spec is not None else ""


def _hinted_key(device: Any) -> str:
    hints = getattr(device, "hints", {}) or {}
    fields = hints.get("fields") or []
    return str(fields[0]) if fields else str(device.name)
