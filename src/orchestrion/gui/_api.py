"""`StackClient` over the API server (`orchestrion.client.Client`) and the stack's Tiled."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from orchestrion.client import PREFIX, AuthError, Client
from orchestrion.errors import InputError

from ._catalog import run_data_from_node, search_catalog
from ._plotdata import RunData
from ._protocol import (
    DeviceInfo,
    ExperimentInfo,
    FieldError,
    Forbidden,
    JobInfo,
    LiveEvent,
    ParameterChange,
    ParameterInfo,
    RunSearch,
    RunSummary,
    ServiceHealth,
    StackStatus,
)

logger = logging.getLogger(__name__)

# The server's refusals are one line, "FIELD: what is wrong" (a parameter id, "scan",
# "shots", "value", ...): the field is what precedes the first colon.
_FIELD = re.compile(r"^(?:[\w ]+ )?(?P<field>[A-Za-z_][\w.\[\]]*):\s")


def field_error(error: InputError, default: str = "") -> FieldError | Forbidden:
    if isinstance(error, AuthError):
        return Forbidden(str(error))
    message = str(error)
    match = _FIELD.match(message)
    return FieldError(match.group("field") if match else default, message)


def _parameter(data: Mapping[str, Any]) -> ParameterInfo:
    """A parameter from the API: its declaration plus its stored entry (value, timestamp, source)."""
    merged = dict(data)
    stored = merged.get("stored")
    if isinstance(stored, Mapping):
        merged = {**merged, **{k: stored[k] for k in ("value", "timestamp", "source") if k in stored}}
    return ParameterInfo.from_json(merged)


def _job(data: Mapping[str, Any]) -> JobInfo:
    request = {
        "experiment": data.get("experiment"),
        **{k: v for k, v in (data.get("arguments") or {}).items() if k != "md"},
    }
    for key in ("scan", "repetitions", "shots", "pattern"):
        if data.get(key) is not None:
            request.setdefault(key, data[key])
    done = data.get("points_done", data.get("points"))
    return JobInfo.from_json({
        **data,
        "submitted": data.get("created"),
        "points_done": done or 0,
        "request": request,
    })  # fmt: skip


SERVICE_NAMES = {
    "api": "API server",
    "queue-server": "queue server",
    "redis": "Redis",
    "tiled": "Tiled",
    "parameter-store": "parameter store",
}
"""The stack's service names as the status bar shows them (post-processing workers keep theirs)."""


class _Live:
    """Reads the API's server-sent events on a thread of its own until closed.

    It has its own HTTP connection, so closing it from the GUI thread ends a read that
    waits for the next event (`Client.live` is a generator only its own thread can stop).
    """

    def __init__(self, url: str, api_key: str, on_event: Callable[[LiveEvent], None], interval: float) -> None:
        self.on_event, self.interval = on_event, interval
        self._http = httpx.Client(base_url=url, headers={"Authorization": f"Apikey {api_key}"}, timeout=None)
        self._closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="orchestrion-gui-live", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._read()
            except Exception as exc:  # the server restarting, a dropped connection, close()
                if self._closed.is_set():
                    return
                logger.warning("live stream interrupted (%s); reconnecting", exc)
                self._closed.wait(1.0)

    def _read(self) -> None:
        with self._http.stream("GET", f"{PREFIX}/live", params={"interval": self.interval}) as response:
            response.raise_for_status()
            event = "message"
            for line in response.iter_lines():
                if self._closed.is_set():
                    return
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    self._deliver(event, json.loads(line[5:]))
                    event = "message"

    def _deliver(self, event: str, data: Any) -> None:
        if event == "job":
            self.on_event(LiveEvent(kind="job", job=_job(data)))
        elif event == "points":
            document = {"points": data["points"], "keys": data.get("keys") or {}}
            if data.get("start") is not None:  # the run's first batch from the bus
                document |= {"start": data["start"], "descriptor": data.get("descriptor")}
            self.on_event(LiveEvent(kind="points", job_id=int(data["job"]), document=document))

    def close(self) -> None:
        self._closed.set()
        self._http.close()
        self.thread.join(timeout=10)


class ApiStackClient:
    """The GUI's view of a stack, through its API server's URL and a key."""

    def __init__(self, url: str, api_key: str, *, live_interval: float = 0.05) -> None:
        self.api = Client(url, api_key)
        self._key = api_key
        # The live stream's round: 0.05 s (the API server's least) keeps a point's p99 lag
        # under 0.2 s at 200 points/s (`bench gui-stack`: 0.19 and 0.185 s; 0.22-0.25 at
        # 0.1 s), for one light round of queries per client each time.
        self.live_interval = live_interval
        self._lock = threading.Lock()
        self._subscriptions: list[_Live] = []

    def experiments(self) -> Sequence[ExperimentInfo]:
        found = []
        for data in self.api.experiments():
            parameters = [_parameter(p) for p in data.get("parameters", ())]
            found.append(ExperimentInfo.from_json({**data, "parameters": []}))
            found[-1] = ExperimentInfo(
                name=found[-1].name, description=found[-1].description, parameters=tuple(parameters),
                group=found[-1].group, default_shots=found[-1].default_shots,
                default_scans=found[-1].default_scans, device_axes=found[-1].device_axes,
                calibrates=found[-1].calibrates,
            )  # fmt: skip
        return found

    def submit(self, request: Mapping[str, Any], *, priority: int, validate_only: bool = False) -> JobInfo | None:
        fields = dict(request)
        try:
            handle = self.api.submit(
                str(fields.pop("experiment")),
                scan=fields.get("scan"),
                parameters=fields.get("parameters") or None,
                shots=fields.get("shots"),
                repetitions=int(fields.get("repetitions", 1)),
                pattern=str(fields.get("pattern", "linear")),
                priority=priority,
            )
        except InputError as exc:
            raise field_error(exc) from None
        return _job(handle.refresh())

    def jobs(self) -> Sequence[JobInfo]:
        return [_job(j) for j in self.api.jobs()]

    def job(self, job_id: int) -> JobInfo:
        return _job(self.api.job_record(job_id))

    def cancel(self, job_id: int) -> JobInfo:
        try:
            return _job(self.api.cancel(job_id))
        except InputError as exc:
            raise field_error(exc) from None

    def set_priority(self, job_id: int, priority: int) -> JobInfo:
        try:
            return _job(self.api.set_priority(job_id, priority))
        except InputError as exc:
            raise field_error(exc, "priority") from None

    def pause(self, *, immediate: bool = False) -> None:
        self.api.pause(immediate=immediate)

    def resume(self) -> None:
        self.api.resume()

    def abort(self) -> None:
        self.api.abort()

    def parameters(self) -> Sequence[ParameterInfo]:
        return [_parameter(p) for p in self.api.parameters()]

    def set_parameter(self, parameter_id: str, value: Any) -> ParameterInfo:
        try:
            stored = self.api.set(parameter_id, value)
        except InputError as exc:
            error = field_error(exc, parameter_id)
            if isinstance(error, FieldError) and error.field == "value":
                error.field = parameter_id
            raise error from None
        # The answer holds the new value, its time and source; the page has the declaration.
        return _parameter(stored)

    def history(self, parameter_id: str) -> Sequence[ParameterChange]:
        return [ParameterChange.from_json(c) for c in self.api.history(parameter_id)]

    def devices(self) -> Sequence[DeviceInfo]:
        devices = []
        for data in self.api.devices():
            connection = data.get("state") or ""
            if data.get("error"):
                connection = f"{connection}: {data['error']}"
            devices.append(DeviceInfo.from_json({**data, "connection": connection}))
        return devices

    def set_device_enabled(self, name: str, enabled: bool) -> DeviceInfo:
        try:
            self.api.enable_device(name) if enabled else self.api.disable_device(name)
        except InputError as exc:
            raise field_error(exc) from None
        return next(d for d in self.devices() if d.name == name)

    def status(self) -> StackStatus:
        """Every service's health as the API server checks it (`GET status`), who is connected, who you are."""
        answer = self.api.stack_status()
        services = tuple(
            ServiceHealth(
                name=SERVICE_NAMES.get(row["name"], row["name"]),
                healthy=row["health"] == "ok",
                detail=str(row.get("detail") or ""),
                health=str(row["health"]),
            )
            for row in answer["services"]
        )
        you = answer["you"]
        connected = tuple((str(c["name"]), str(c["role"])) for c in answer.get("clients", ()))
        return StackStatus(services=services, principal=str(you["name"]), role=str(you["role"]), connected=connected)

    def subscribe(self, on_event: Callable[[LiveEvent], None]) -> _Live:
        live = _Live(self.api.url, self._key, on_event, self.live_interval)
        self._subscriptions.append(live)
        return live

    def prepare_catalog(self) -> None:
        # The first run node read imports bluesky-tiled-plugins' client (dask, scipy: 9 s
        # at load 4), which would hold the first live job's plot back that long.
        import bluesky_tiled_plugins  # noqa: F401

        with self._lock:
            self.api.catalog()

    def search_runs(self, search: RunSearch) -> Sequence[RunSummary]:
        with self._lock:
            return search_catalog(self.api.catalog(), search)

    def run_data(self, uid: str) -> RunData:
        with self._lock:
            return run_data_from_node(self.api.catalog()[uid])

    def job_run(self, job_id: int) -> RunData | None:
        with self._lock:
            catalog = self.api.catalog()
            found = search_catalog(catalog, RunSearch(job_id=job_id, limit=1))
            return run_data_from_node(catalog[found[0].uid]) if found else None

    def close(self) -> None:
        for live in self._subscriptions:
            live.close()
        self.api.close()
