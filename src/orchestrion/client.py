"""The Python client of a running stack: submit jobs, follow them, get their data.

>>> from orchestrion.client import Client
>>> with Client() as client:
...     job = client.submit("spectroscopy", scan=["spectroscopy.detuning=-50e3:50e3:21"], priority=5)
...     job.wait()
...     run = job.data()          # the run in the stack's Tiled catalog

Submissions are validated here (unknown experiment, bad value, bad scan) and by the
queue server (the user group's permissions, the plan's signature) before the job is
accepted; a refused submission raises `InputError` and leaves nothing behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.devices import DeviceRegistry
from orchestrion.errors import InputError
from orchestrion.experiment import ExperimentLibrary, RunLimits
from orchestrion.identity import current_user
from orchestrion.jobs import (
    Job,
    JobRequest,
    JobStatus,
    JobStore,
    QueueServerError,
    abort_running,
    cancel_job,
    check_parameter_store,
    code_version,
    pause_running,
    resume_paused,
    submit_job,
    validate_request,
)
from orchestrion.services import close_api, queue_server_api, tiled_api_key, tiled_uri


@contextmanager
def _refused(action: str) -> Iterator[None]:
    """The queue server's refusals as one-line user errors."""
    from bluesky_queueserver_api.comm_base import RequestFailedError, RequestTimeoutError

    try:
        yield
    except RequestFailedError as exc:
        message = str(exc).strip().splitlines()[0].removeprefix("Request failed: ")
        raise InputError(f"cannot {action}: {message}") from None
    except RequestTimeoutError as exc:
        raise QueueServerError(f"cannot {action}: the queue server does not answer ({exc})") from None


class JobHandle:
    """A submitted job: its row in the job table, read afresh on every question."""

    def __init__(self, client: Client, job_id: int) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}: {self.status.value}>"

    def refresh(self) -> Job:
        return self.client.store.get(self.id)

    @property
    def record(self) -> Job:
        return self.refresh()

    @property
    def status(self) -> JobStatus:
        return self.refresh().status

    def wait(self, timeout: float | None = None, *, poll: float = 0.05) -> Job:
        """Block until the job is done, failed or cancelled; its final row."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.refresh()
            if job.status.terminal:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} is still {job.status.value} after {timeout} s")
            time.sleep(poll)

    def cancel(self) -> Job:
        """Remove the job from the queue, or abort it if it runs."""
        return self.client.cancel(self.id)

    def data(self) -> Any:
        """The job's (last) run in the stack's Tiled catalog."""
        job = self.refresh()
        if job.run_uid is None:
            raise LookupError(f"job {self.id} has no run (it is {job.status.value})")
        return self.client.catalog()[job.run_uid]


class Client:
    """Submit to and follow the stack that `orchestrion up` started for a configuration."""

    def __init__(
        self,
        config: OrchestrionConfig | None = None,
        *,
        user: str | None = None,
        user_group: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.config = config or load_config()
        self.timeout = timeout
        self.user = user or current_user()
        self.user_group = user_group or self.config.queue_user_group
        self.store = JobStore.open(self.config)
        self._api: Any = None
        self._lab: tuple[ExperimentLibrary, DeviceRegistry] | None = None
        self._code: tuple[str | None, bool | None] | None = None
        self._catalog: Any = None

    # -- context ---------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        if self._api is not None:
            close_api(self._api)
            self._api = None
        if self._catalog is not None:
            self._catalog.context.close()
            self._catalog = None
        self.store.close()

    @property
    def api(self) -> Any:
        """The bluesky-queueserver-api client (0MQ) of the stack's queue server."""
        if self._api is None:
            self._api = queue_server_api(self.config, timeout=self.timeout)
        return self._api

    # -- jobs ------------------------------------------------------------------------------

    def validate(self, request: JobRequest) -> dict[str, Any]:
        """Check a request without submitting it; the plan arguments it would queue."""
        if self._lab is None:
            from orchestrion.lab import load_library_and_devices

            self._lab = load_library_and_devices(self.config)
        library, devices = self._lab
        return validate_request(library, devices, request, limits=RunLimits.of(self.config))

    def submit(
        self,
        experiment: str,
        *,
        scan: Sequence[str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        shots: int | None = None,
        repetitions: int = 1,
        pattern: str = "linear",
        priority: int = 0,
        md: Mapping[str, Any] | None = None,
    ) -> JobHandle:
        """Queue ``experiment``; higher ``priority`` runs sooner (ties: first come, first run).

        ``scan`` takes "ID=START:STOP:NUM" texts; ``parameters`` values for this run only.
        """
        request = JobRequest.build(
            experiment=experiment, scan=scan, parameters=dict(parameters or {}), shots=shots,
            repetitions=repetitions, pattern=pattern, priority=priority, md=dict(md or {}),
        )  # fmt: skip
        kwargs = self.validate(request)
        check_parameter_store(self.config)  # refused now, with the reason, not failed later
        if self._code is None:
            self._code = code_version(self.config.plans_dir)
        job = submit_job(
            self.store, self.api, request, kwargs, submitter=self.user, user_group=self.user_group, code=self._code
        )
        return JobHandle(self, job.id)

    def job(self, job_id: int) -> JobHandle:
        self.store.get(job_id)  # an unknown id fails here, not later
        return JobHandle(self, job_id)

    def jobs(self, status: JobStatus | str | None = None) -> list[Job]:
        """The job table, newest first."""
        return self.store.list(JobStatus(status) if status is not None else None)

    def cancel(self, job_id: int) -> Job:
        """Remove a queued job from the queue, or abort it if it runs."""
        with _refused(f"cancel job {job_id}"):
            return cancel_job(self.store, self.api, job_id)

    # -- the RunEngine ---------------------------------------------------------------------

    def pause(self, *, immediate: bool = False) -> str:
        """Pause the running job (at its next checkpoint, or at once); what was paused."""
        with _refused("pause"):
            return pause_running(self.store, self.api, immediate=immediate)

    def resume(self) -> str:
        """Resume the paused job; what was resumed."""
        with _refused("resume"):
            return resume_paused(self.store, self.api)

    def abort(self) -> str:
        """Abort the running job: it is recorded cancelled and the queue goes on; what was aborted.

        `InputError` if nothing runs.
        """
        with _refused("abort"):
            return abort_running(self.api, store=self.store)

    # -- data ------------------------------------------------------------------------------

    def catalog(self) -> Any:
        """The stack's Tiled catalog (a tiled client node)."""
        if self._catalog is None:
            from tiled.client import from_uri

            uri = self.config.tiled_uri or tiled_uri(self.config)
            self._catalog = from_uri(uri, api_key=tiled_api_key(self.config))
        return self._catalog
