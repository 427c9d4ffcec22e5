"""What the GUI needs from the stack: a small typed protocol, and the records it returns.

The pages are written against `StackClient`, not against HTTP: `ApiStackClient` (the
API server and Tiled, `_api.py`) is the implementation a lab uses.  Each record is
built from the JSON the API serves (``from_json``), so an extra field in a response is
ignored and a missing optional one takes its default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ._plotdata import RunData


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value)).astimezone()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True)
class ParameterInfo:
    """A declared parameter with its stored value."""

    id: str
    type: str
    unit: str = ""
    default: Any = None
    value: Any = None
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[Any, ...] | None = None
    group: str = ""
    description: str = ""
    timestamp: datetime | None = None
    source: str = ""

    @property
    def namespace(self) -> str:
        return self.id.split(".", 1)[0]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParameterInfo:
        allowed = data.get("allowed")
        return cls(
            id=str(data["id"]),
            type=str(data.get("type", "")),
            unit=str(data.get("unit") or ""),
            default=data.get("default"),
            value=data.get("value", data.get("stored")),
            minimum=data.get("minimum"),
            maximum=data.get("maximum"),
            allowed=tuple(allowed) if allowed is not None else None,
            group=str(data.get("group") or ""),
            description=str(data.get("description") or ""),
            timestamp=_time(data.get("timestamp")),
            source=str(data.get("source") or ""),
        )


@dataclass(frozen=True)
class ParameterChange:
    """One entry of a parameter's history."""

    value: Any
    timestamp: datetime
    source: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParameterChange:
        stamp = _time(data.get("timestamp"))
        if stamp is None:
            raise ValueError("a parameter change without a timestamp")
        return cls(value=data.get("value"), timestamp=stamp, source=str(data.get("source") or ""))


@dataclass(frozen=True)
class ScanDefault:
    """An experiment's default scan axis."""

    id: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class ExperimentInfo:
    """An experiment of the library, as the API describes it."""

    name: str
    description: str
    parameters: tuple[ParameterInfo, ...]
    group: str = ""
    default_shots: int = 100
    default_scans: tuple[ScanDefault, ...] = ()
    device_axes: tuple[str, ...] = ()
    """Device settings that scans may set (``rf.frequency``)."""
    calibrates: tuple[str, ...] = ()

    @property
    def display_group(self) -> str:
        if self.group:
            return self.group
        return "Calibrations" if self.calibrates else "Measurements"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExperimentInfo:
        scans = []
        for axis in data.get("default_scans") or data.get("default_scan") or ():
            scans.append(ScanDefault(id=str(axis["id"]), values=tuple(float(v) for v in axis.get("values", ()))))
        axes = data.get("device_axes") or data.get("scannable_devices") or ()
        calibrates = data.get("calibrates") or {}
        return cls(
            name=str(data["name"]),
            description=str(data.get("description") or ""),
            parameters=tuple(ParameterInfo.from_json(p) for p in data.get("parameters", ())),
            group=str(data.get("group") or ""),
            default_shots=int(data.get("default_shots") or 100),
            default_scans=tuple(scans),
            device_axes=tuple(str(a["id"]) if isinstance(a, Mapping) else str(a) for a in axes),
            calibrates=tuple(calibrates.values() if isinstance(calibrates, Mapping) else calibrates),
        )


TERMINAL_STATUSES = frozenset({"done", "incomplete", "failed", "cancelled"})


@dataclass(frozen=True)
class JobInfo:
    """A job of the job table."""

    id: int
    experiment: str
    status: str
    priority: int = 0
    submitter: str = ""
    submitted: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    points_done: int = 0
    points_total: int | None = None
    error: str | None = None
    run_uid: str | None = None
    request: Mapping[str, Any] = field(default_factory=dict)
    """What was asked: scan, parameters, shots, repetitions, pattern (for resubmission)."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobInfo:
        request = data.get("request") or {}
        return cls(
            id=int(data["id"]),
            experiment=str(data.get("experiment") or request.get("experiment", "")),
            status=str(data.get("status", "")),
            priority=int(data.get("priority") or 0),
            submitter=str(data.get("submitter") or ""),
            submitted=_time(data.get("submitted") or data.get("submitted_at")),
            started=_time(data.get("started") or data.get("started_at")),
            finished=_time(data.get("finished") or data.get("finished_at")),
            points_done=int(data.get("points_done") or data.get("points") or 0),
            points_total=data.get("points_total"),
            error=data.get("error"),
            run_uid=data.get("run_uid"),
            request=request,
        )


@dataclass(frozen=True)
class DeviceInfo:
    """A device of the lab."""

    name: str
    device_class: str
    role: str
    enabled: bool
    connection: str
    """"connected", "disconnected", "disabled" or the connection error."""
    readback: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceInfo:
        return cls(
            name=str(data["name"]),
            device_class=str(data.get("class") or data.get("device_class") or ""),
            role=str(data.get("role") or ""),
            enabled=bool(data.get("enabled", True)),
            connection=str(data.get("connection") or data.get("state") or ""),
            readback=dict(data.get("readback") or data.get("reading") or {}),
        )


@dataclass(frozen=True)
class ServiceHealth:
    """One service of the stack as its health check found it."""

    name: str
    healthy: bool
    detail: str = ""
    health: str = ""
    """"ok", "degraded", "unhealthy" or "down" (`orchestrion status`'s words); "" if not told."""


@dataclass(frozen=True)
class StackStatus:
    """The health of each service and who this client is."""

    services: tuple[ServiceHealth, ...]
    principal: str
    role: str
    """"admin", "user" or "observer"."""
    connected: tuple[tuple[str, str], ...] = ()
    """Other clients connected to the live stream: (who, role)."""

    @property
    def may_write(self) -> bool:
        return self.role in {"admin", "user"}


@dataclass(frozen=True)
class RunSummary:
    """A catalogued run, as a search finds it."""

    uid: str
    experiment: str
    time: datetime | None
    job_id: int | None
    scan_id: int | None
    points: int | None
    exit_status: str | None


@dataclass(frozen=True)
class RunSearch:
    """A search over the catalog; empty fields do not restrict."""

    experiment: str = ""
    job_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Start-document keys (dotted) and the values they must equal."""
    limit: int = 50


class FieldError(Exception):
    """The server refused a request because of one field; ``field`` names it as the editor does.

    ``field`` is a parameter id, "scan", "shots", "repetitions", "pattern", "priority",
    "experiment" or "" when the message names no field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Forbidden(Exception):
    """The key's role may not do this (HTTP 403)."""


@dataclass
class LiveEvent:
    """One message of the live stream: a job's new state, or a point of the running job."""

    kind: str
    """"job" (``job`` set), "points" (``job_id``; ``document["points"]``: rows of the job's file,
    ``document["keys"]``: their file names' data keys)
    or "document" (``job_id``, ``name`` and ``document``: a document of the job's run)."""
    job: JobInfo | None = None
    name: str = ""
    document: Mapping[str, Any] = field(default_factory=dict)
    job_id: int | None = None


class LiveSubscription(Protocol):
    def close(self) -> None: ...


class StackClient(Protocol):
    """The stack as the GUI sees it: the API server's resources and the catalog's runs."""

    def experiments(self) -> Sequence[ExperimentInfo]: ...

    def submit(self, request: Mapping[str, Any], *, priority: int, validate_only: bool = False) -> JobInfo | None:
        """Queue a run request (the `RunRequest` fields); raises `FieldError` when refused."""
        ...

    def jobs(self) -> Sequence[JobInfo]: ...

    def job(self, job_id: int) -> JobInfo: ...

    def cancel(self, job_id: int) -> JobInfo: ...

    def set_priority(self, job_id: int, priority: int) -> JobInfo: ...

    def pause(self, *, immediate: bool = False) -> None: ...

    def resume(self) -> None: ...

    def abort(self) -> None: ...

    def parameters(self) -> Sequence[ParameterInfo]: ...

    def set_parameter(self, parameter_id: str, value: Any) -> ParameterInfo:
        """Store a value; raises `FieldError` (field: the id) when refused."""
        ...

    def history(self, parameter_id: str) -> Sequence[ParameterChange]: ...

    def devices(self) -> Sequence[DeviceInfo]: ...

    def set_device_enabled(self, name: str, enabled: bool) -> DeviceInfo: ...

    def status(self) -> StackStatus: ...

    def subscribe(self, on_event: Callable[[LiveEvent], None]) -> LiveSubscription:
        """Call ``on_event`` (from another thread) for every live message until closed."""
        ...

    def search_runs(self, search: RunSearch) -> Sequence[RunSummary]: ...

    def prepare_catalog(self) -> None:
        """Open the catalog and import what reading a run needs (seconds), before a run is shown."""
        ...

    def run_data(self, uid: str) -> RunData: ...

    def job_run(self, job_id: int) -> RunData | None:
        """The (last) run of a job as the catalog holds it so far; None before it is there."""
        ...

    def close(self) -> None: ...
