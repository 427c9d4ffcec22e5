"""Orchestrion's API, mounted in bluesky-httpserver as its custom router (`/api/orchestrion/...`).

Every route but `health` authenticates with bluesky-httpserver's own dependency (the
same API keys as the queue server's routes) and then checks Orchestrion's scope: no
valid key is 401, a key whose role lacks the scope 403, and nothing has changed.
Bodies are parsed and validated here, with the same models as the CLI, so a refusal is
one line that names the field.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from bluesky_httpserver.authentication import get_current_principal
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from orchestrion.bus import Follower
from orchestrion.config import load_config
from orchestrion.errors import InputError, OrchestrionError
from orchestrion.experiment import first_error
from orchestrion.jobs import TERMINAL, Job, JobRequest, JobStatus, QueueServerError
from orchestrion.parameters import ParameterStoreUnavailable
from orchestrion.schema import API_PREFIX, API_TILED_PREFIX
from orchestrion.services import run_dir, tiled_api_key, tiled_uri

from ._backend import Backend, Conflict, Forbidden, NotFound
from ._keys import check_name, create_key, database_uri
from ._live import SERVER_STOPPING, BusPointReader, LiveClients, PointReader, changed_jobs, sse
from ._roles import ROLE_SCOPES, Role, RoleFile, Scope, roles_path
from ._tiled import Forwarded, TiledDoor, TiledRefusal, query_items, response_headers

T = TypeVar("T", bound=BaseModel)

PREFIX = API_PREFIX
_backend: Backend | None = None


def backend() -> Backend:
    """The server process's one backend, opened at the first request."""
    global _backend
    if _backend is None:
        _backend = Backend(load_config())
    return _backend


def refusals() -> Iterator[None]:
    """Orchestrion's errors as HTTP answers: 4xx naming the field, 503 when a server is away."""
    try:
        yield
    except Forbidden as exc:
        raise HTTPException(403, str(exc)) from None
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    except (QueueServerError, ParameterStoreUnavailable) as exc:
        raise HTTPException(503, str(exc)) from None
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None
    except OrchestrionError as exc:
        raise HTTPException(409, str(exc)) from None


router = APIRouter(prefix=PREFIX, tags=["orchestrion"], dependencies=[Depends(refusals)])


@dataclass(frozen=True)
class Caller:
    """The authenticated principal: who, in which role, allowed what."""

    name: str
    role: Role
    scopes: frozenset[str]

    def require(self, scope: Scope) -> None:
        if scope.value not in self.scopes:
            raise HTTPException(403, f"role '{self.role.value}' may not do this (needs scope {scope.value})")

    @property
    def source(self) -> str:
        """How a parameter write is recorded."""
        return f"api:{self.name}"


def caller(principal: Annotated[Any, Security(get_current_principal, scopes=[])]) -> Caller:
    roles = [r for r in (principal.roles or []) if r in {role.value for role in Role}]
    if not principal.scopes or not roles:
        raise HTTPException(
            401, "authentication required: send a valid API key ('Authorization: Apikey KEY')",
            headers={"WWW-Authenticate": "Apikey"},
        )  # fmt: skip
    identities = principal.identities or []
    name = identities[0].id if identities else "unknown"
    return Caller(name=name, role=Role(roles[0]), scopes=frozenset(principal.scopes))


def reader(who: Annotated[Caller, Depends(caller)]) -> Caller:
    who.require(Scope.READ)
    return who


Authenticated = Annotated[Caller, Depends(caller)]
Reader = Annotated[Caller, Depends(reader)]


async def parse(request: Request, model: type[T]) -> T:
    """The body as ``model``: 400 for malformed JSON, 422 naming the first wrong field."""
    raw = await request.body()
    limit = load_limit()
    if len(raw) > limit:
        raise HTTPException(413, f"body: larger than {limit} bytes")
    try:
        document = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise HTTPException(422, "body: expected a JSON object")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise HTTPException(422, first_error(exc)) from None


def load_limit() -> int:
    return backend().config.api_max_body_bytes


def job_id_of(text: str) -> int:
    """A job id from a path: digits only, else 422 naming it."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise HTTPException(422, f"job: {text!r} is not a job id (a positive integer)")
    return int(text)


def parse_time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise HTTPException(422, f"{name}: {text!r} is not an ISO-8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking backend work (SQLite, 0MQ) off the event loop."""
    return await run_in_threadpool(func, *args, **kwargs)


# -- who am I ------------------------------------------------------------------------------


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness, without a key (tells nothing but that the server answers)."""
    return {"status": "ok"}


@router.get("/whoami")
def whoami(who: Authenticated) -> dict[str, Any]:
    return {"name": who.name, "role": who.role.value, "scopes": sorted(who.scopes)}


# -- experiments ---------------------------------------------------------------------------


@router.get("/experiments")
async def experiments(who: Reader) -> list[dict[str, Any]]:
    """The library: each experiment with its declared parameters and the schema of a submission."""
    lab = await call(backend)
    return [await call(lab.describe_experiment, name) for name in lab.experiment_names()]


@router.get("/experiments/{name}")
async def experiment(who: Reader, name: str) -> dict[str, Any]:
    return await call((await call(backend)).describe_experiment, name)  # type: ignore[no-any-return]


# -- parameters ----------------------------------------------------------------------------


class ParameterWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any = Field(description="The new value, checked against the declaration")


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1, max_length=10_000, description="Parameter ids or namespaces")
    at: str | None = Field(None, description="ISO-8601 time (UTC unless given); unset: now")


@router.get("/parameters")
async def parameters(who: Reader, namespace: Annotated[list[str] | None, Query()] = None) -> list[dict[str, Any]]:
    return await call(backend().list_parameters, list(namespace or []))  # type: ignore[no-any-return]


@router.post("/parameters/snapshot")
async def snapshot(who: Reader, request: Request) -> dict[str, Any]:
    body = await parse(request, SnapshotRequest)
    return await call(backend().snapshot, body.ids, parse_time(body.at, "at"))  # type: ignore[no-any-return]


@router.get("/parameters/{parameter_id}")
async def parameter(who: Reader, parameter_id: str, at: str | None = None) -> dict[str, Any]:
    return await call(backend().get_parameter, parameter_id, parse_time(at, "at"))  # type: ignore[no-any-return]


@router.put("/parameters/{parameter_id}")
async def set_parameter(who: Authenticated, parameter_id: str, request: Request) -> dict[str, Any]:
    who.require(Scope.PARAMETERS)
    backend().spec(parameter_id)  # an unknown id is 404 before the body is read
    body = await parse(request, ParameterWrite)
    return await call(backend().set_parameter, parameter_id, body.value, who.source)  # type: ignore[no-any-return]


@router.get("/parameters/{parameter_id}/history")
async def history(
    who: Reader, parameter_id: str, since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    start, end = parse_time(since, "since"), parse_time(until, "until")
    return await call(backend().history, parameter_id, start, end)  # type: ignore[no-any-return]


# -- jobs ----------------------------------------------------------------------------------


class Resubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: StrictInt | None = Field(None, description="The new job's priority (default: the original's)")


class PriorityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: StrictInt = Field(description="Higher runs sooner")


@router.post("/jobs", status_code=201)
async def submit(who: Authenticated, request: Request) -> dict[str, Any]:
    """Queue a job: the same validation as `orchestrion submit`; refused requests leave nothing."""
    who.require(Scope.SUBMIT)
    body = await parse(request, JobRequest)
    lab = backend()
    job = await call(lab.submit, body, submitter=who.name, role=who.role)
    return await call(lab.describe_job, job)  # type: ignore[no-any-return]


@router.get("/jobs")
async def jobs(
    who: Reader,
    status: Annotated[list[str] | None, Query()] = None,
    experiment: str | None = None,
    submitter: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """The job table, newest first, filtered by status (repeatable), experiment, submitter."""
    try:
        statuses = [JobStatus(s) for s in status or []]
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise HTTPException(422, f"status: one of {known}") from None
    if not 1 <= limit <= 100_000:
        raise HTTPException(422, "limit: between 1 and 100000")
    lab = backend()
    rows = await call(lab.list_jobs, statuses, experiment, submitter, limit)
    return [await call(lab.describe_job, row) for row in rows]


@router.get("/jobs/{job_id}")
async def job(who: Reader, job_id: str) -> dict[str, Any]:
    lab = backend()
    return await call(lab.describe_job, await call(lab.job, job_id_of(job_id)))  # type: ignore[no-any-return]


@router.post("/jobs/{job_id}/cancel")
async def cancel(who: Authenticated, job_id: str) -> dict[str, Any]:
    """Remove a queued job from the queue, or abort it if it runs (users: their own jobs)."""
    who.require(Scope.SUBMIT)
    lab = backend()
    row = await call(lab.cancel, job_id_of(job_id), name=who.name, may_any=Scope.CANCEL_ANY.value in who.scopes)
    return await call(lab.describe_job, row)  # type: ignore[no-any-return]


@router.post("/jobs/{job_id}/resubmit", status_code=201)
async def resubmit(who: Authenticated, job_id: str, request: Request) -> dict[str, Any]:
    """A new job with the same request; it records the job it came from as its parent."""
    who.require(Scope.SUBMIT)
    body = await parse(request, Resubmission)
    lab = backend()
    row = await call(lab.resubmit, job_id_of(job_id), priority=body.priority, submitter=who.name, role=who.role)
    return await call(lab.describe_job, row)  # type: ignore[no-any-return]


@router.patch("/jobs/{job_id}")
async def reprioritise(who: Authenticated, job_id: str, request: Request) -> dict[str, Any]:
    """Change the priority of a queued job; it moves in the queue accordingly."""
    who.require(Scope.SUBMIT)
    body = await parse(request, PriorityChange)
    lab = backend()
    may_any = Scope.CANCEL_ANY.value in who.scopes
    row = await call(lab.reprioritise, job_id_of(job_id), body.priority, name=who.name, may_any=may_any)
    return await call(lab.describe_job, row)  # type: ignore[no-any-return]


# -- the RunEngine -------------------------------------------------------------------------


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    option: str = Field("deferred", pattern="^(deferred|immediate)$", description='"deferred" or "immediate"')


@router.get("/runengine")
async def runengine(who: Reader) -> dict[str, Any]:
    return await call(backend().runengine_state)  # type: ignore[no-any-return]


@router.post("/runengine/pause")
async def pause(who: Authenticated, request: Request) -> dict[str, Any]:
    who.require(Scope.CONTROL)
    body = await parse(request, PauseRequest)
    return await call(backend().pause, body.option)  # type: ignore[no-any-return]


@router.post("/runengine/resume")
async def resume(who: Authenticated) -> dict[str, Any]:
    who.require(Scope.CONTROL)
    return await call(backend().resume)  # type: ignore[no-any-return]


@router.post("/runengine/abort")
async def abort(who: Authenticated) -> dict[str, Any]:
    who.require(Scope.CONTROL)
    return await call(backend().abort)  # type: ignore[no-any-return]


# -- devices -------------------------------------------------------------------------------


class DeviceSwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500, description="Why (one line), kept in the device's history")


@router.get("/devices")
async def devices(who: Reader) -> list[dict[str, Any]]:
    """Each device with class, role, enabled, state, and the operator's last switch."""
    return await call(backend().list_devices)  # type: ignore[no-any-return]


@router.get("/devices/history")
async def all_device_history(who: Reader) -> list[dict[str, Any]]:
    """Every device switch, oldest first: who, when, why."""
    return await call(backend().device_history, None)  # type: ignore[no-any-return]


@router.get("/devices/{name}/history")
async def device_history(who: Reader, name: str) -> list[dict[str, Any]]:
    return await call(backend().device_history, name)  # type: ignore[no-any-return]


async def _switch(who: Caller, name: str, request: Request, *, enabled: bool) -> dict[str, Any]:
    who.require(Scope.DEVICES)
    body = await parse(request, DeviceSwitchRequest)
    lab = backend()
    return await call(lab.switch_device, name, enabled=enabled, user=who.name, reason=body.reason)  # type: ignore[no-any-return]


@router.post("/devices/{name}/enable")
async def enable(who: Authenticated, name: str, request: Request) -> dict[str, Any]:
    """Use the device again from the next run on (in every process of the lab)."""
    return await _switch(who, name, request, enabled=True)


@router.post("/devices/{name}/disable")
async def disable(who: Authenticated, name: str, request: Request) -> dict[str, Any]:
    """Leave the device out from the next run on; an experiment that needs it is refused, naming it."""
    return await _switch(who, name, request, enabled=False)


# -- health of the stack, and who is connected -----------------------------------------------

_clients = LiveClients()
_health_lock = asyncio.Lock()
_health: tuple[float, list[dict[str, Any]]] | None = None
HEALTH_MAX_AGE = 1.0
"""Seconds one round of health checks answers for: many GUIs polling cost one round."""


@router.get("/status")
async def stack_status(who: Reader) -> dict[str, Any]:
    """The health of every service (as `orchestrion status` checks it) and the live stream's clients."""
    global _health
    async with _health_lock:
        if _health is None or time.monotonic() - _health[0] > HEALTH_MAX_AGE:
            _health = (time.monotonic(), await call(backend().stack_health))
        services = _health[1]
    return {
        "services": services,
        "clients": [client.to_dict() for client in _clients.listed()],
        "you": {"name": who.name, "role": who.role.value},
    }


# -- data: Tiled's read API through this door ------------------------------------------------

_door: TiledDoor | None = None


def tiled_door() -> TiledDoor:
    """The process's one forwarder to the stack's Tiled server (its key read on each request)."""
    global _door
    if _door is None:
        config = backend().config
        _door = TiledDoor(config.tiled_uri or tiled_uri(config), lambda: tiled_api_key(config))
    return _door


def door_url(request: Request) -> str:
    """This server's Tiled door as the client reached it (scheme, host, root path)."""
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}{door_prefix(request)}"


def door_prefix(request: Request) -> str:
    return f"{request.scope.get('root_path', '').rstrip('/')}{API_TILED_PREFIX}"


@router.get("/catalog")
def catalog(who: Reader, request: Request) -> dict[str, Any]:
    """Where the stack's runs are read: the Tiled door of this server (`tiled.client.from_uri(url, api_key=KEY)`).

    The same Orchestrion key reads them; the stack's own Tiled key stays on the server.
    """
    return {"url": door_url(request)}


tiled_router = APIRouter(prefix=API_TILED_PREFIX, tags=["tiled"], include_in_schema=False)
"""Tiled's read API at `/tiled`: a Tiled server's root, so `tiled.client.from_uri(API_URL/tiled)` finds it."""


@tiled_router.get("/api/v1")
@tiled_router.get("/api/v1/")
async def tiled_about(request: Request) -> Response:
    """Tiled's `about` (its version, formats, links), without a key, as Tiled serves it.

    The tiled client reads it before it sends its key; it holds no data.
    """
    return await _forward(request, "api/v1/")


@tiled_router.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
async def tiled(who: Reader, path: str, request: Request) -> Response:
    """Tiled's read API (GET, and the POSTs that read columns), forwarded with the stack's Tiled key."""
    return await _forward(request, path)


async def _forward(request: Request, path: str) -> Response:
    door = await call(tiled_door)
    where = Forwarded(host=request.headers.get("host", request.url.netloc), scheme=request.url.scheme,
                      prefix=door_prefix(request))  # fmt: skip
    body = await request.body() if request.method == "POST" else b""
    try:
        answer = await door.forward(
            request.method, path, query_items(request.query_params.multi_items()), request.headers, body, where
        )
    except TiledRefusal as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if request.method == "HEAD":
        await answer.aclose()
        return Response(status_code=answer.status_code, headers=response_headers(answer))
    return StreamingResponse(
        answer.aiter_raw(), status_code=answer.status_code, headers=response_headers(answer),
        background=BackgroundTask(answer.aclose),
    )  # fmt: skip


# -- keys ----------------------------------------------------------------------------------


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role = Field(description="admin, user or observer")
    name: str = Field(description="Who holds the key (recorded as submitter and parameter source)")
    note: str = Field("", max_length=500)


@router.post("/keys", status_code=201)
async def new_key(who: Authenticated, request: Request) -> dict[str, Any]:
    """A new API key for a named holder with a role: the secret is in this answer only."""
    who.require(Scope.KEYS)
    body = await parse(request, KeyRequest)
    check_name(body.name)
    directory = run_dir(backend().config)
    secret = await call(create_key, database_uri(directory), RoleFile(roles_path(directory)), body.name, body.role,
                        note=body.note)  # fmt: skip
    return {"name": body.name, "role": body.role.value, "scopes": sorted(ROLE_SCOPES[body.role]), "key": secret}


# -- live ----------------------------------------------------------------------------------


@router.get("/live")
async def live(who: Reader, request: Request, interval: float = 0.2) -> StreamingResponse:
    """Server-sent events: `job` (a job's row, when it changes) and `points` (the running job's new points)."""
    if not 0.05 <= interval <= 10:
        raise HTTPException(422, "interval: between 0.05 and 10 s")
    lab = backend()

    address = request.client.host if request.client is not None else ""

    async def events() -> AsyncIterator[str]:
        # Listed while the stream is open: a disconnect cancels it, which ends here too.
        token = _clients.add(who.name, who.role.value, address)
        try:
            async for event in stream():
                yield event
        finally:
            _clients.remove(token)

    async def stream() -> AsyncIterator[str]:
        states = await call(lab.job_states)
        yield sse("hello", {"name": who.name, "jobs": len(states)})
        # A client that joins late learns the state of every job still in flight first.
        for job_id, (state, *_) in states.items():
            if JobStatus(state) not in TERMINAL:
                yield sse("job", await call(lab.describe_job, await call(lab.job, job_id)))
        readers: dict[int, PointReader | BusPointReader] = {}  # job id -> its reader, while its points may come
        # Services mode: the RunEngine's documents are on the bus within ~0.1 s, a file's
        # rows only after its next flush (`hdf5_flush_interval`).
        follower = Follower(lab.config) if lab.config.post_processing_workers else None

        def reader_of(job: Job) -> PointReader | BusPointReader:
            if follower is not None:
                return BusPointReader(follower, lab.config.data_dir, job)
            return PointReader(lab.config.data_dir, job)

        try:
            async for event in points(states, readers, reader_of):
                yield event
        finally:
            if follower is not None:
                follower.close()

    async def points(
        states: dict[int, tuple[str, int | None, float | None]],
        readers: dict[int, PointReader | BusPointReader],
        reader_of: Callable[[Job], PointReader | BusPointReader],
    ) -> AsyncIterator[str]:
        clock = asyncio.get_running_loop().time
        while not SERVER_STOPPING.is_set() and not await request.is_disconnected():
            # Rounds start every ``interval``: the round's own queries and reads are not
            # added to it (they were: a point waited up to interval plus a round).
            next_round = clock() + interval
            now = await call(lab.job_states)
            for job_id in changed_jobs(states, now):
                yield sse("job", await call(lab.describe_job, await call(lab.job, job_id)))
            states = now
            live = {job.id: job for job in await call(lab.live_jobs)}
            for job_id, job in sorted(live.items()):
                readers.setdefault(job_id, reader_of(job)).job = job  # its run and file, as recorded now
            for job_id, reader_ in sorted(readers.items()):
                batch = await call(reader_.new_batch)
                if batch is not None:
                    yield sse("points", batch.to_dict(job_id))
                if job_id not in live and batch is None:
                    del readers[job_id]  # read until nothing is left after its last point was written
            await asyncio.sleep(max(0.0, next_round - clock()))

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
