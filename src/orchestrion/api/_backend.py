"""What the API server does behind its routes: the same submission, parameter and device code as the CLI.

One `Backend` per server process: the experiment library and the devices (built, never
connected: the worker owns the hardware) for validation, the job table, the parameter
store and a 0MQ client of the queue server on loopback.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from orchestrion import devices as lab_devices
from orchestrion.config import OrchestrionConfig
from orchestrion.errors import InputError, ParameterError
from orchestrion.experiment import RunLimits, RunRequest, prepare_run
from orchestrion.jobs import (
    Job,
    JobRequest,
    JobStatus,
    JobStore,
    QueueServerError,
    abort_running,
    cancel_job,
    change_priority,
    check_parameter_store,
    code_version,
    submit_job,
    validate_request,
)
from orchestrion.lab import load_library_and_devices
from orchestrion.parameters import ParameterSpec, ParameterValue, open_parameter_store
from orchestrion.services import close_api, queue_server_api, stack_services, start_order

from ._roles import Role


class Forbidden(InputError):
    """The principal may not do this (403)."""


class NotFound(InputError):
    """No such job, experiment, parameter or device (404)."""


class Conflict(InputError):
    """The request is well formed but the state of things refuses it (409)."""


@contextmanager
def _queue_server_refusals(action: str) -> Iterator[None]:
    from bluesky_queueserver_api.comm_base import RequestFailedError, RequestTimeoutError

    try:
        yield
    except RequestFailedError as exc:
        message = str(exc).strip().splitlines()[0].removeprefix("Request failed: ") if str(exc).strip() else "refused"
        raise Conflict(f"cannot {action}: {message}") from None
    except (RequestTimeoutError, TimeoutError, ConnectionError) as exc:
        raise QueueServerError(f"cannot {action}: the queue server does not answer ({exc})") from None


def value_entry(value: ParameterValue, spec: ParameterSpec) -> dict[str, Any]:
    return value.entry(spec.unit)


class Backend:
    """The stack's state as the API server sees it."""

    def __init__(self, config: OrchestrionConfig) -> None:
        self.config = config
        self.library, self.devices = load_library_and_devices(config)
        self.specs = {spec.id: spec for spec in self.library.parameter_specs()}
        self.store = JobStore.open(config)
        self.parameters = open_parameter_store(config)
        self.parameters.declare(self.specs.values())
        self.code = code_version(config.plans_dir)
        # One 0MQ client, one request at a time: submission, cancel and control are
        # each one decision against the queue, taken in turn.
        self._lock = threading.Lock()
        self._api: Any = None
        self._totals: dict[int, int | None] = {}

    def close(self) -> None:
        if self._api is not None:
            close_api(self._api)
        self.store.close()
        self.parameters.close()

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = queue_server_api(self.config, timeout=5.0)
        return self._api

    # -- experiments -----------------------------------------------------------------------

    def experiment_names(self) -> list[str]:
        return self.library.names()

    def describe_experiment(self, name: str) -> dict[str, Any]:
        try:
            experiment = self.library.experiment(name)
        except InputError as exc:
            raise NotFound(str(exc)) from None
        stored = self.parameters.snapshot([spec.id for spec in experiment.parameters])
        schema = JobRequest.model_json_schema()
        schema["properties"]["experiment"] = {**schema["properties"]["experiment"], "const": name}
        return {
            **experiment.describe(),
            "parameters": [
                {**spec.model_dump(mode="json"), "stored": value_entry(stored[spec.id], spec)}
                for spec in experiment.parameters
            ],
            "device_axes": self.device_axes(),
            "submission_schema": schema,
        }

    def device_axes(self) -> list[str]:
        """Ids like 'rf.frequency' that a scan can set (numeric, movable, readable)."""
        axes: list[str] = []
        for lab_device in self.devices:
            device = lab_device.device
            children = getattr(device, "children", None)
            if device is None or children is None:
                continue
            for child_name, _ in children():
                dotted = f"{lab_device.name}.{child_name}"
                if self.devices.resolve_settable(dotted) is not None:
                    axes.append(dotted)
        return axes

    # -- parameters ------------------------------------------------------------------------

    def spec(self, parameter_id: str) -> ParameterSpec:
        spec = self.specs.get(parameter_id)
        if spec is None:
            raise NotFound(f"parameter: unknown parameter {parameter_id!r}")
        return spec

    def list_parameters(self, namespaces: list[str]) -> list[dict[str, Any]]:
        ids = [pid for pid in self.specs if not namespaces or any(pid.startswith(ns + ".") for ns in namespaces)]
        unknown = [ns for ns in namespaces if not any(pid.startswith(ns + ".") for pid in self.specs)]
        if unknown:
            raise NotFound(f"namespace: no parameters in {unknown[0]!r}")
        values = self.parameters.snapshot(ids)
        return [
            {
                **value_entry(values[pid], self.specs[pid]),
                **self.specs[pid].model_dump(mode="json", exclude={"id", "unit"}),
            }
            for pid in ids
        ]

    def get_parameter(self, parameter_id: str, at: datetime | None) -> dict[str, Any]:
        spec = self.spec(parameter_id)
        try:
            return value_entry(self.parameters.get(parameter_id, at=at), spec)
        except ParameterError as exc:
            raise NotFound(f"at: {exc}") from None

    def set_parameter(self, parameter_id: str, value: Any, source: str) -> dict[str, Any]:
        spec = self.spec(parameter_id)
        try:
            checked = spec.validate_value(value)
        except ParameterError as exc:
            raise InputError(f"value: {exc}") from None
        previous = self.parameters.get(parameter_id)
        stored = self.parameters.set(parameter_id, checked, source=source)
        return {**value_entry(stored, spec), "previous": value_entry(previous, spec)}

    def history(self, parameter_id: str, since: datetime | None, until: datetime | None) -> list[dict[str, Any]]:
        spec = self.spec(parameter_id)
        return [value_entry(v, spec) for v in self.parameters.history(parameter_id, since=since, until=until)]

    def snapshot(self, ids: list[str], at: datetime | None) -> dict[str, dict[str, Any]]:
        wanted: list[str] = []
        for pid in ids:
            if pid in self.specs:
                wanted.append(pid)
            elif any(known.startswith(pid + ".") for known in self.specs):
                wanted.extend(known for known in self.specs if known.startswith(pid + "."))
            else:
                raise NotFound(f"ids: unknown parameter or namespace {pid!r}")
        values = self.parameters.snapshot(wanted, at=at)
        return {pid: value_entry(value, self.specs[pid]) for pid, value in values.items()}

    # -- jobs ------------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        job = self.store.find(job_id)
        if job is None:
            raise NotFound(f"job: no job {job_id}")
        return job

    def describe_job(self, job: Job) -> dict[str, Any]:
        document = job.to_dict()
        document["points_total"] = self._total(job)
        document["fits"] = dict(job.analysis)
        return document

    def _total(self, job: Job) -> int | None:
        if job.id not in self._totals:
            try:
                request = RunRequest(experiment=job.experiment, **job.arguments)
                prepared = prepare_run(
                    self.library.experiment(job.experiment), self.devices, request, limits=RunLimits.of(self.config)
                )
                self._totals[job.id] = prepared.num_points
            except Exception:  # an adopted item the library cannot read: no total to give
                self._totals[job.id] = None
        return self._totals[job.id]

    def list_jobs(
        self, statuses: list[JobStatus], experiment: str | None, submitter: str | None, limit: int
    ) -> list[Job]:
        jobs = self.store.list(statuses or None)
        selected = [
            j
            for j in jobs
            if (experiment is None or j.experiment == experiment) and (submitter is None or j.submitter == submitter)
        ]
        return selected[:limit]

    def submit(self, request: JobRequest, *, submitter: str, role: Role, parent: int | None = None) -> Job:
        # Refused with the reason while the lab's InfluxDB is down: the job could only fail.
        check_parameter_store(self.config)
        kwargs = validate_request(self.library, self.devices, request, limits=RunLimits.of(self.config))
        with self._lock:
            return submit_job(
                self.store, self.api, request, kwargs, submitter=submitter, user_group=_user_group(role),
                code=self.code, parent=parent,
            )  # fmt: skip

    def resubmit(self, job_id: int, *, priority: int | None, submitter: str, role: Role) -> Job:
        original = self.job(job_id)
        fields = dict(original.arguments)
        fields.pop("md", None)
        try:
            request = JobRequest(
                experiment=original.experiment,
                priority=original.priority if priority is None else priority,
                **fields,
            )
        except Exception as exc:
            raise Conflict(f"job: job {job_id} cannot be resubmitted: {exc}") from None
        return self.submit(request, submitter=submitter, role=role, parent=job_id)

    def _check_owner(self, job: Job, name: str, may_any: bool) -> None:
        if not may_any and job.submitter != name:
            raise Forbidden(f"job: job {job.id} was submitted by someone else; only an admin may change it")

    def cancel(self, job_id: int, *, name: str, may_any: bool) -> Job:
        job = self.job(job_id)
        self._check_owner(job, name, may_any)
        with self._lock, _queue_server_refusals(f"cancel job {job_id}"):
            try:
                return cancel_job(self.store, self.api, job_id)
            except InputError as exc:
                raise Conflict(f"job: {exc}") from None

    def reprioritise(self, job_id: int, priority: int, *, name: str, may_any: bool) -> Job:
        job = self.job(job_id)
        self._check_owner(job, name, may_any)
        with self._lock, _queue_server_refusals(f"change the priority of job {job_id}"):
            try:  # honoured at the executor's next claim (ADR 0310)
                return change_priority(self.store, self.api, job_id, priority)
            except InputError as exc:
                raise Conflict(f"job: {exc}") from None

    # -- the RunEngine ---------------------------------------------------------------------

    def pause(self, option: str) -> dict[str, Any]:
        with self._lock, _queue_server_refusals("pause"):
            self.api.re_pause(option=option)
        return self.runengine_state()

    def resume(self) -> dict[str, Any]:
        with self._lock, _queue_server_refusals("resume"):
            self.api.re_resume()
        return self.runengine_state()

    def abort(self) -> dict[str, Any]:
        with self._lock, _queue_server_refusals("abort"):
            state = self.api.status(reload=True)["manager_state"]
            if state not in ("executing_queue", "paused"):
                raise Conflict(f"cannot abort: nothing runs (the manager is {state})")
            abort_running(self.api)
        return self.runengine_state()

    def runengine_state(self) -> dict[str, Any]:
        with _queue_server_refusals("read the RunEngine state"):
            status = self.api.status(reload=True)
        keys = ("manager_state", "re_state", "items_in_queue", "running_item_uid", "worker_environment_exists")
        return {key: status.get(key) for key in keys}

    # -- devices ---------------------------------------------------------------------------

    def list_devices(self) -> list[dict[str, Any]]:
        """Each device with class, role, enabled (operators' switches applied), state and why not in use."""
        # Switches made by another process (the CLI, another API call) are in the lab's
        # switches file: read them again, as a submission does.
        self.devices.refresh()
        return lab_devices.describe_devices(self.devices)

    def switch_device(self, name: str, *, enabled: bool, user: str, reason: str) -> dict[str, Any]:
        """Enable or disable a device for every process of the lab (kept with who, when and why)."""
        if name not in self.devices:
            raise NotFound(f"device: no device {name!r} in the lab configuration")
        record = lab_devices.switch_device(self.config, name, enabled=enabled, user=user, reason=reason)
        self.devices.refresh()
        described = next(d for d in self.list_devices() if d["name"] == name)
        return {**described, "switch": record.to_dict()}

    def device_history(self, name: str | None) -> list[dict[str, Any]]:
        if name is not None and name not in self.devices:
            raise NotFound(f"device: no device {name!r} in the lab configuration")
        return [switch.to_dict() for switch in lab_devices.device_history(self.config, name)]

    # -- health ----------------------------------------------------------------------------

    def stack_health(self) -> list[dict[str, Any]]:
        """Every service of the stack as `orchestrion status` checks it, then the parameter store.

        The checks run side by side (each waits up to 2 s for an answer), so a dead
        service costs one timeout, not one per service.
        """
        services = start_order(stack_services(self.config))
        with ThreadPoolExecutor(max_workers=len(services) + 1, thread_name_prefix="health") as pool:
            store = pool.submit(self.parameter_store_health)
            rows = [
                {
                    "name": s.name,
                    "health": s.health,
                    "detail": s.detail,
                    "address": without_credentials(s.address),
                    "pid": s.pid,
                }
                for s in pool.map(lambda svc: svc.status(self.config), services)
            ]
            rows.append(store.result())
        return rows

    def parameter_store_health(self) -> dict[str, Any]:
        where = without_credentials(self.config.influx_url) if self.config.influx_url else "embedded (SQLite)"
        try:
            if self.config.influx_url:
                # A new connection: the open store's cache would answer for a server that is gone.
                check_parameter_store(self.config)
            else:
                self.parameters.snapshot(list(self.specs)[:1])
        except Exception as exc:
            return {"name": "parameter-store", "health": "unhealthy", "detail": f"{type(exc).__name__}: {exc}",
                    "address": where, "pid": None}  # fmt: skip
        kind = "InfluxDB" if self.config.influx_url else "SQLite"
        return {"name": "parameter-store", "health": "ok", "detail": kind, "address": where, "pid": None}

    # -- live ------------------------------------------------------------------------------

    def job_states(self, limit: int = 200) -> dict[int, tuple[str, int | None, float | None]]:
        return {j.id: (j.status.value, j.points, j.finished) for j in self.store.list(limit=limit)}

    def live_jobs(self) -> list[Job]:
        """The jobs whose points may still arrive: running, paused, and writing (their run
        stopped, post-processing still writing its last points: the next job may be
        running meanwhile, back to back)."""
        return self.store.list((JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.WRITING), limit=8)


def without_credentials(address: str) -> str:
    """An address fit to show anyone: a password or user in a URL (redis://:PW@host) left out."""
    parts = urlsplit(address)
    if not parts.scheme or "@" not in parts.netloc:
        return address
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _user_group(role: Role) -> str:
    """The queue-server user group a role submits as (profile/user_group_permissions.yaml)."""
    return "admin" if role is Role.ADMIN else "primary"
