"""The Python client of a running stack: it speaks only HTTP, to the API server and to Tiled.

>>> from orchestrion.client import Client
>>> with Client(url="http://lab-server:60610", api_key="...") as client:
...     job = client.submit("spectroscopy", scan=["spectroscopy.detuning=-50e3:50e3:21"], priority=5)
...     job.wait()
...     run = job.data()          # the run, from the stack's Tiled catalog

It needs no `$ORCHESTRION_HOME`, no job table and no checkout of `plans/` or
`devices/`: validation happens on the server, and a refusal raises `InputError` with
the server's one line naming the problem.  `Client.local()` finds the local stack's
URL and admin key (or `ORCHESTRION_API_URL` and `ORCHESTRION_API_KEY`).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from orchestrion.errors import InputError, OrchestrionError
from orchestrion.schema import API_PREFIX, API_TILED_PREFIX

PREFIX = API_PREFIX
TERMINAL = ("done", "incomplete", "failed", "cancelled")  # "writing": the run is over, its data not yet


class ApiError(OrchestrionError):
    """The API server cannot be reached, or failed for a reason not the caller's."""


class AuthError(InputError):
    """No valid key (401), or the key's role may not do this (403)."""


class JobHandle:
    """A submitted job, read afresh from the server on every question."""

    def __init__(self, client: Client, job_id: int) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}: {self.status}>"

    def refresh(self) -> dict[str, Any]:
        """The job's row: status, times, error, run uid, points, HDF5 path, Tiled node, fits, code commit."""
        return self.client.job_record(self.id)

    @property
    def status(self) -> str:
        return str(self.refresh()["status"])

    def wait(self, timeout: float | None = None, *, poll: float = 0.1) -> dict[str, Any]:
        """Block until the job is done, failed or cancelled; its final row."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.refresh()
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} is still {job['status']} after {timeout} s")
            time.sleep(poll)

    def cancel(self) -> dict[str, Any]:
        return self.client.cancel(self.id)

    def data(self, timeout: float = 30.0) -> Any:
        """The job's (last) run in the stack's Tiled catalog (waiting up to ``timeout`` for it to arrive)."""
        job = self.refresh()
        if not job.get("run_uid"):
            raise LookupError(f"job {self.id} has no run (it is {job['status']})")
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.client.catalog()[job["run_uid"]]
            except KeyError:
                # Post-processing catalogues a run after its RunEngine is done with it.
                if time.monotonic() > deadline:
                    raise LookupError(f"job {self.id}: run {job['run_uid']} is not in the catalog") from None
                time.sleep(0.2)


class Client:
    """Submit to and follow a stack through its API server."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        tiled_url: str | None = None,
        tiled_api_key: str | None = None,
        timeout: float = 30.0,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        """``verify``: True (the system's CAs), a CA file of the lab's certificate, or an SSL context."""
        self.url = url.rstrip("/")
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Apikey {api_key}"}, timeout=timeout, verify=verify
        )
        self._tiled = (tiled_url, tiled_api_key)
        self._api_key = api_key
        self._verify = verify
        self._catalog: Any = None

    @classmethod
    def local(cls, config: Any = None, **options: Any) -> Client:
        """The client of the configured stack: `api_url`/`api_key`, else the local stack's URL and admin key."""
        return cls(*local_credentials(config), **options)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        if self._catalog is not None:
            self._catalog.context.close()
            self._catalog = None

    # -- HTTP ------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None, params: Any = None) -> Any:
        """One call to the API; its JSON answer, or one error with the server's message."""
        try:
            response = self._http.request(method, PREFIX + path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise ApiError(f"the API server at {self.url} does not answer ({exc})") from None
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        message = detail if isinstance(detail, str) else json.dumps(detail)
        if response.status_code in (401, 403):
            raise AuthError(message)
        if response.status_code < 500:
            raise InputError(message)
        raise ApiError(f"the API server failed (HTTP {response.status_code}): {message}")

    # -- experiments and parameters --------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return dict(self.request("GET", "/whoami"))

    def experiments(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/experiments"))

    def experiment(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/experiments/{_segment(name)}"))

    def parameters(self, *namespaces: str) -> list[dict[str, Any]]:
        return list(self.request("GET", "/parameters", params={"namespace": list(namespaces)}))

    def get(self, parameter_id: str, at: str | None = None) -> dict[str, Any]:
        params = {"at": at} if at is not None else None
        return dict(self.request("GET", f"/parameters/{_segment(parameter_id)}", params=params))

    def set(self, parameter_id: str, value: Any) -> dict[str, Any]:
        """Store a new value (validated by the server; the source recorded is this key's holder)."""
        return dict(self.request("PUT", f"/parameters/{_segment(parameter_id)}", body={"value": value}))

    def history(self, parameter_id: str, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        return list(self.request("GET", f"/parameters/{_segment(parameter_id)}/history", params=params))

    def snapshot(self, ids: Sequence[str], at: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", "/parameters/snapshot", body={"ids": list(ids), "at": at}))

    # -- jobs ------------------------------------------------------------------------------

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
        """Queue ``experiment``; higher ``priority`` runs sooner (ties: first come, first run)."""
        body: dict[str, Any] = {"experiment": experiment, "repetitions": repetitions, "pattern": pattern,
                                "priority": priority}  # fmt: skip
        if scan is not None:
            body["scan"] = list(scan)
        if parameters:
            body["parameters"] = dict(parameters)
        if shots is not None:
            body["shots"] = shots
        if md:
            body["md"] = dict(md)
        return JobHandle(self, int(self.request("POST", "/jobs", body=body)["id"]))

    def job(self, job_id: int) -> JobHandle:
        self.job_record(job_id)  # an unknown id fails here, not later
        return JobHandle(self, job_id)

    def job_record(self, job_id: int) -> dict[str, Any]:
        return dict(self.request("GET", f"/jobs/{int(job_id)}"))

    def jobs(
        self, status: str | Sequence[str] | None = None, *, experiment: str | None = None, submitter: str | None = None
    ) -> list[dict[str, Any]]:
        """The job table, newest first."""
        params: dict[str, Any] = {}
        if status is not None:
            params["status"] = [status] if isinstance(status, str) else list(status)
        if experiment is not None:
            params["experiment"] = experiment
        if submitter is not None:
            params["submitter"] = submitter
        return list(self.request("GET", "/jobs", params=params))

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Remove a queued job from the queue, or abort it if it runs."""
        return dict(self.request("POST", f"/jobs/{int(job_id)}/cancel"))

    def resubmit(self, job_id: int, *, priority: int | None = None) -> JobHandle:
        """A new job with the same request (its parent recorded)."""
        row = self.request("POST", f"/jobs/{int(job_id)}/resubmit", body={"priority": priority})
        return JobHandle(self, int(row["id"]))

    def set_priority(self, job_id: int, priority: int) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/jobs/{int(job_id)}", body={"priority": priority}))

    # -- the RunEngine and devices ---------------------------------------------------------

    def pause(self, *, immediate: bool = False) -> dict[str, Any]:
        """Pause the running job (at its next checkpoint, or at once)."""
        return dict(self.request("POST", "/runengine/pause", body={"option": "immediate" if immediate else "deferred"}))

    def resume(self) -> dict[str, Any]:
        return dict(self.request("POST", "/runengine/resume"))

    def abort(self) -> dict[str, Any]:
        """Abort the running job: it is recorded cancelled and the queue goes on."""
        return dict(self.request("POST", "/runengine/abort"))

    def runengine(self) -> dict[str, Any]:
        return dict(self.request("GET", "/runengine"))

    def devices(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/devices"))

    def enable_device(self, name: str, *, reason: str = "") -> dict[str, Any]:
        """Use the device again from the next run on (kept with who, when and why)."""
        return dict(self.request("POST", f"/devices/{_segment(name)}/enable", body={"reason": reason}))

    def disable_device(self, name: str, *, reason: str = "") -> dict[str, Any]:
        """Leave the device out from the next run on: a submission that needs it is refused, naming it."""
        return dict(self.request("POST", f"/devices/{_segment(name)}/disable", body={"reason": reason}))

    def device_history(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every device switch, oldest first (of one device, if named)."""
        path = "/devices/history" if name is None else f"/devices/{_segment(name)}/history"
        return list(self.request("GET", path))

    def stack_status(self) -> dict[str, Any]:
        """The health of every service of the stack, the live stream's clients, and who you are."""
        return dict(self.request("GET", "/status"))

    def create_key(self, role: str, name: str, note: str = "") -> dict[str, Any]:
        """A new API key (admins only); its secret is in this answer and nowhere else."""
        return dict(self.request("POST", "/keys", body={"role": role, "name": name, "note": note}))

    # -- live ------------------------------------------------------------------------------

    def live(self, *, interval: float = 0.2) -> Iterator[tuple[str, Any]]:
        """Server-sent events as (event, data): 'job' on each change of a job, 'points' as they are written."""
        with self._http.stream("GET", PREFIX + "/live", params={"interval": interval}, timeout=None) as response:
            if not response.is_success:
                response.read()
                raise AuthError(response.text) if response.status_code in (401, 403) else InputError(response.text)
            event = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    yield event, json.loads(line[5:])
                    event = "message"

    # -- data ------------------------------------------------------------------------------

    @property
    def tiled_url(self) -> str:
        """The API server's door to the stack's Tiled (read only, with this client's key)."""
        return tiled_door(self.url)

    def catalog(self) -> Any:
        """The stack's Tiled catalog (a tiled client node), read through the API server with this key.

        ``tiled_url`` and ``tiled_api_key`` given to the constructor name another Tiled
        server (and its key) instead.
        """
        if self._catalog is None:
            from tiled.client import from_uri

            url, key = self._tiled
            if url is None:
                url, key = self.tiled_url, self._api_key
            self._catalog = from_uri(url, api_key=key, verify=self._verify)
        return self._catalog


def local_credentials(config: Any = None) -> tuple[str, str]:
    """(API URL, key) of the configured stack: `api_url`/`api_key`, else the local stack's URL and admin key."""
    from orchestrion.config import load_config
    from orchestrion.services import api_url, run_dir

    config = config or load_config()
    url = config.api_url or api_url(config)
    if config.api_key is not None:
        return url, config.api_key.get_secret_value()
    path = run_dir(config) / "api-key"
    try:
        return url, path.read_text().strip()
    except OSError:
        raise AuthError(f"no API key: set ORCHESTRION_API_KEY (or start the stack, which writes {path})") from None


def tiled_door(url: str) -> str:
    """The Tiled URL of the API server at ``url``: its door to the stack's catalog."""
    return f"{url.rstrip('/')}{API_TILED_PREFIX}"


def _segment(text: str) -> str:
    """A path segment, quoted: an id with a slash or a dot-dot stays one segment."""
    from urllib.parse import quote

    return quote(text, safe="")
