"""Running an experiment: validate, snapshot parameters, pre-process, drive the hardware."""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import secrets
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Location
from bluesky.utils import Msg, MsgGenerator
from ophyd_async.core import SignalR, StandardReadable, StandardReadableFormat, soft_signal_r_and_setter
from ophyd_async.plan_stubs import ensure_connected
from pydantic import ValidationError

import orchestrion
from orchestrion.devices import DeviceRegistry, ReadoutRole
from orchestrion.errors import DeviceError, InputError, OrchestrionError, ParameterError, ScanSpecError
from orchestrion.parameters import ParameterValue, ParameterValueType
from orchestrion.schema import ANALYSIS, BASELINE, PARAMETERS_AT, PRIMARY, SEQUENCES, id_to_data_key
from orchestrion.sequence import PulseSequence, SequenceError, as_sequence_error

from ._experiment import Experiment
from ._preprocess import Preprocessor
from ._scan import ScanAxis, ScanPattern, ScanPoint, expand_scan

if TYPE_CHECKING:
    from orchestrion.lab import Lab

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
class RunRequest:
    """A validated request to run an experiment: everything checked, nothing moved yet."""

    experiment: Experiment
    axes: tuple[AxisTarget, ...]
    overrides: Mapping[str, ParameterValueType]
    device_settings: Mapping[str, tuple[Any, float]]
    shots: int
    repetitions: int
    pattern: ScanPattern
    seed: int
    points: tuple[ScanPoint, ...] = field(repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "axes": [{"id": t.axis.id, "kind": t.kind, "values": list(t.axis.values)} for t in self.axes],
            "pattern": self.pattern.value,
            "repetitions": self.repetitions,
            "shots": self.shots,
            "seed": self.seed,
            "num_points": len(self.points),
        }


def prepare_run(
    experiment: Experiment,
    devices: DeviceRegistry,
    *,
    scans: Sequence[str | ScanAxis] | None = None,
    overrides: Mapping[str, Any] | None = None,
    shots: int | None = None,
    repetitions: int = 1,
    pattern: str | ScanPattern = ScanPattern.LINEAR,
    seed: int | None = None,
) -> RunRequest:
    """Check a run request completely, before any hardware moves.

    Raises one `InputError` that names the problem: an unknown or out-of-bounds
    parameter, a malformed scan, a device that cannot take the value.  Override values
    may be typed values or text from a command line.
    """
    pattern = pattern if isinstance(pattern, ScanPattern) else ScanPattern.parse(pattern)
    shots = experiment.default_shots if shots is None else shots
    if not isinstance(shots, int) or isinstance(shots, bool) or not 1 <= shots <= 100_000:
        raise InputError(f"shots must be a whole number from 1 to 100000, not {shots!r}")
    if not isinstance(repetitions, int) or isinstance(repetitions, bool) or repetitions < 1:
        raise InputError(f"repetitions must be a whole number of at least 1, not {repetitions!r}")

    # An operator may have switched a device off since the lab opened: refuse here,
    # naming it, rather than fail at the hardware.
    devices.refresh()
    devices.require([experiment.sequencer], by=f"experiment '{experiment.name}'")
    axes_given = [s if isinstance(s, ScanAxis) else ScanAxis.parse(s) for s in scans] if scans is not None else None
    axes = list(experiment.default_scans) if axes_given is None else axes_given
    targets = tuple(_axis_target(experiment, devices, axis) for axis in axes)

    checked_overrides: dict[str, ParameterValueType] = {}
    device_settings: dict[str, tuple[Any, float]] = {}
    for parameter_id, raw in (overrides or {}).items():
        spec = experiment.spec(parameter_id)
        if spec is not None:
            checked_overrides[parameter_id] = spec.parse_text(raw) if isinstance(raw, str) else spec.validate_value(raw)
            continue
        _require_device_of(devices, parameter_id, f"--set '{parameter_id}'")
        device = devices.resolve_settable(parameter_id)
        if device is None:
            raise ParameterError(f"experiment '{experiment.name}' reads no parameter '{parameter_id}'")
        device_settings[parameter_id] = (device, _device_value(parameter_id, device, raw))
    scanned = {t.axis.id for t in targets}
    clash = scanned & (set(checked_overrides) | set(device_settings))
    if clash:
        raise InputError(f"parameter '{sorted(clash)[0]}' is both scanned and set")

    seed = secrets.randbits(32) if seed is None else seed
    points = tuple(expand_scan([t.axis for t in targets], pattern, repetitions, seed))
    return RunRequest(
        experiment, targets, checked_overrides, device_settings, shots, repetitions, pattern, seed, points
    )


def _axis_target(experiment: Experiment, devices: DeviceRegistry, axis: ScanAxis) -> AxisTarget:
    spec = experiment.spec(axis.id)
    if spec is not None:
        if spec.type.value not in ("int", "float"):
            raise ScanSpecError(f"scan '{axis.id}': a {spec.type.value} parameter cannot be scanned")
        for value in axis.values:
            spec.validate_value(value)
        return AxisTarget(axis, None)
    _require_device_of(devices, axis.id, f"scan '{axis.id}'")
    device = devices.resolve_settable(axis.id)
    if device is None:
        raise ScanSpecError(
            f"scan '{axis.id}': neither a parameter of '{experiment.name}' nor a settable device parameter"
        )
    for value in axis.values:
        _device_value(axis.id, device, value)
    return AxisTarget(axis, device)


def _require_device_of(devices: DeviceRegistry, parameter_id: str, by: str) -> None:
    name = devices.device_of(parameter_id)
    if name is not None:
        devices.require([name], by=by)


def _device_value(parameter_id: str, device: Any, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ParameterError(f"{parameter_id}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ParameterError(f"{parameter_id}: {raw!r} is not a finite number")
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


@dataclass
class ExperimentResult:
    """What a finished run of an experiment returns to the calling plan."""

    run_uid: str
    points: list[ScanPoint]
    readings: list[dict[str, Any]]
    analysis: dict[str, float]
    parameters_written: dict[str, ParameterValue]


def read_parameters(experiment: Experiment, lab: Lab, at: object) -> dict[str, ParameterValue]:
    """The run's parameter snapshot, in one read.

    Without ``at``: every parameter at its latest.  With ``at`` (a queued job's
    submission time, ICON's rule): the experiment's own parameters ('spectroscopy.*') as
    they were then, so later edits do not change a job already accepted, and the shared
    ones (qubit, detection, ...) at their latest, so a calibration that ran in between
    is used.
    """
    if at is None:
        return lab.parameters.snapshot(experiment.parameter_ids)
    try:
        moment = datetime.fromisoformat(str(at))
    except ValueError:
        raise InputError(f"metadata {PARAMETERS_AT}: '{at}' is not an ISO-8601 time") from None
    own = f"{experiment.name}."
    shared = [pid for pid in experiment.parameter_ids if not pid.startswith(own)]
    return lab.parameters.snapshot(experiment.parameter_ids, at=moment, latest=shared)


def set_with_readback(target_id: str, device: Any, value: float, retries: int) -> MsgGenerator[float]:
    """Set a device parameter, read it back, retry while it is out of tolerance."""
    tolerance = yield from _tolerance(device)
    readback = math.nan
    for attempt in range(1, retries + 1):
        yield from bps.mv(device, value)
        location: Location[float] = yield Msg("locate", device, squeeze=True)
        readback = float(location["readback"])
        if abs(readback - value) <= tolerance:
            return readback
        logger.warning(
            "%s: read back %g after setting %g (attempt %d of %d)", target_id, readback, value, attempt, retries
        )
    raise DeviceError(f"{target_id}: read back {readback:g} after setting {value:g}, {retries} attempts")


def _tolerance(device: Any) -> MsgGenerator[float]:
    """How far a read-back may be from its target: the device's `tolerance`, or the
    retry deadband of an EPICS motor record (`ophyd_async.epics.motor.Motor`)."""
    tolerance = getattr(device, "tolerance", None)
    if tolerance is None and isinstance(getattr(device, "deadband", None), SignalR):
        tolerance = yield from bps.rd(device.deadband)
    return float(tolerance or 0.0)


def run_experiment(
    experiment: Experiment,
    lab: Lab,
    *,
    scans: Sequence[str | ScanAxis] | None = None,
    overrides: Mapping[str, Any] | None = None,
    shots: int | None = None,
    repetitions: int = 1,
    pattern: str | ScanPattern = ScanPattern.LINEAR,
    seed: int | None = None,
    md: Mapping[str, Any] | None = None,
) -> MsgGenerator[ExperimentResult]:
    """Run ``experiment`` on the lab: one event per point in 'primary', fits in 'analysis'.

    Everything is validated and the first sequence compiled before the run opens; a bad
    request raises `InputError` and no hardware moves.
    """
    request = prepare_run(
        experiment,
        lab.devices,
        scans=scans,
        overrides=overrides,
        shots=shots,
        repetitions=repetitions,
        pattern=pattern,
        seed=seed,
    )
    snapshot = read_parameters(experiment, lab, (md or {}).get(PARAMETERS_AT))
    values: dict[str, ParameterValueType] = {pid: v.value for pid, v in snapshot.items()}
    values.update(request.overrides)

    # Split once: stored-parameter axes feed the compiler, device axes are set on devices.
    parameter_targets = [t for t in request.axes if t.device is None]
    device_axes = [t for t in request.axes if t.device is not None]
    parameter_axes = [t.axis.id for t in parameter_targets]

    def compile_point(point: ScanPoint) -> PulseSequence:
        point_values = {pid: point.values[pid] for pid in parameter_axes}
        try:
            return experiment.build_sequence(ChainMap(point_values, values), request.shots)
        except ValidationError as exc:  # a compiler that builds models directly
            raise as_sequence_error(exc) from None

    try:
        first = compile_point(request.points[0])
    except SequenceError as exc:
        raise InputError(f"{experiment.name}: {exc}") from None

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
        "num_points": len(request.points),
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
        "orchestrion_version": orchestrion.__version__,
        "hints": {"dimensions": [([key], PRIMARY) for key in hinted] or [(["point-index"], PRIMARY)]},
    }
    start_md.update(md or {})

    result = ExperimentResult(run_uid="", points=[], readings=[], analysis={}, parameters_written={})

    def points_plan() -> MsgGenerator[None]:
        yield from ensure_connected(point_info)
        record, recorded = SequenceRecord(), set[str]()
        yield from ensure_connected(record)
        for setting_id, (device, value) in request.device_settings.items():
            yield from set_with_readback(setting_id, device, value, retries)
        with Preprocessor(
            compile_point,
            request.points,
            lookahead=lab.config.preprocess_lookahead,
            workers=lab.config.preprocess_workers,
        ) as preprocessor:
            for point in request.points:
                # A checkpoint per point: a deferred pause (Ctrl-C once) stops here, and
                # resuming repeats at most the current point.
                yield from bps.checkpoint()
                try:
                    sequence = yield from preprocessor.sequence_for(point.index)
                except SequenceError as exc:
                    raise InputError(f"{experiment.name}, point {point.index}: {exc}") from None
                try:
                    for target in device_axes:
                        axis_id = target.axis.id
                        yield from set_with_readback(axis_id, target.device, point.values[axis_id], retries)
                    point_info.show(point)
                    yield from bps.mv(sequencer.program, sequence.to_json())
                    if sequence.content_hash not in recorded:
                        recorded.add(sequence.content_hash)
                        record.show(sequence)
                        yield from bps.trigger_and_read([record], name=SEQUENCES)
                    reading = yield from bps.trigger_and_read(detectors, name=PRIMARY)
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
        if experiment.analyze is not None:
            fit = experiment.analyze(result.points, result.readings, values)
            if fit:
                result.analysis = dict(fit)
                analysis_device = AnalysisResults(result.analysis)
                yield from ensure_connected(analysis_device)
                yield from bps.trigger_and_read([analysis_device], name=ANALYSIS)

    # The baseline and monitor wrappers act on the open_run/close_run messages, so they
    # must wrap the run, not the plan inside it.
    plan: MsgGenerator[str] = bpp.run_wrapper(points_plan(), md=start_md)
    baseline = lab.devices.with_role(ReadoutRole.BASELINE)
    if baseline:
        plan = baseline_readings(plan, baseline, lab.devices.blame)
    monitors = lab.devices.async_signals()
    if monitors:
        plan = bpp.monitor_during_wrapper(plan, monitors)
    result.run_uid = yield from plan

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
