"""Tiled's app served in this process (the embedded catalog), without its per-request waste.

Two things Tiled's app does at every request that a catalog served in-process, to one
writer, does not need:

- FastAPI analyses every dependency of every request again, from the functions'
  signatures, while an app has any dependency override, and Tiled's `build_app` always
  sets one (its settings).  That was about half of each request's time in the server
  (py-spy: `get_dependant` under `solve_dependencies`), 10-15 ms of each of the ~20
  requests that catalogue a run.  `resolve_dependency_overrides` puts the overrides into
  the routes' dependency trees once, as FastAPI would at each request, and leaves a
  falsy mapping in their place, so FastAPI takes its ordinary path.
- pydantic keeps a parametrized generic model (``Resource[...]``, which Tiled makes for
  every node it answers about) only as long as something else refers to it: between
  requests the garbage collector frees it, and the next request builds the class again
  (6 % of a metadata request's time).  `keep_response_models` holds the ones Tiled uses.
- TiledWriter closes the live stream of every node it wrote at a run's stop, which a
  catalog without a streaming cache or webhooks only looks up (`StreamClosesAnswered`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any


class ResolvedOverrides(dict[Callable[..., Any], Callable[..., Any]]):
    """An app's dependency overrides, already in its routes' dependency trees.

    Falsy, so FastAPI does not analyse the dependencies of each request again (it does
    whenever ``app.dependency_overrides`` is truthy); still readable, since Tiled's
    start-up and shut-down read their settings through it.  An override set later would
    reach no route, so setting one is an error.
    """

    def __bool__(self) -> bool:
        return False

    def __setitem__(self, key: Callable[..., Any], value: Callable[..., Any]) -> None:
        raise TypeError(
            "this app's dependency overrides are resolved into its routes already "
            "(orchestrion.pipeline._tiled_app); one set now would reach no route"
        )


def resolve_dependency_overrides(app: Any) -> int:
    """Put ``app.dependency_overrides`` into its routes' dependency trees, once; how many
    dependencies were replaced.

    Each dependency on an overridden callable becomes the dependant FastAPI makes of its
    override at each request (`fastapi.dependencies.utils.solve_dependencies`: the same
    path, name, OAuth scopes, scope and concurrency); then ``app.dependency_overrides``
    is a `ResolvedOverrides`, unless nothing was replaced (then it is left as it was).
    The routes of included routers are their effective route contexts (FastAPI builds
    them at the first request, or here), which are what serve requests.
    """
    from fastapi.dependencies.utils import get_dependant

    overrides: Mapping[Callable[..., Any], Callable[..., Any]] = app.dependency_overrides
    if isinstance(overrides, ResolvedOverrides) or not overrides:
        return 0
    replaced = 0
    seen: set[int] = set()

    def substitute(dependant: Any) -> None:
        nonlocal replaced
        if id(dependant) in seen:
            return
        seen.add(id(dependant))
        for index, sub in enumerate(dependant.dependencies):
            override = overrides.get(sub.call)
            if override is not None:
                sub = dependant.dependencies[index] = get_dependant(
                    path=sub.path,
                    call=override,
                    name=sub.name,
                    parent_oauth_scopes=_oauth_scopes(sub),
                    scope=sub.scope,
                    concurrency=sub.concurrency,
                )
                replaced += 1
            substitute(sub)

    for dependant in route_dependants(app.router):
        substitute(dependant)
    if replaced:
        app.dependency_overrides = ResolvedOverrides(overrides)
    # else no route this walk knows depends on an override (another FastAPI's layout,
    # say): the overrides stay as they were, so each request still gets them, the slow way.
    return replaced


def _oauth_scopes(dependant: Any) -> list[str]:
    """A dependency's OAuth scopes, its parents' first (what FastAPI hands its override)."""
    scopes = list(dependant.parent_oauth_scopes or [])
    scopes.extend(scope for scope in dependant.own_oauth_scopes or [] if scope not in scopes)
    return scopes


def route_dependants(router: Any) -> Iterator[Any]:
    """The dependency tree (`fastapi.dependencies.models.Dependant`) of every route that
    serves requests through ``router``: its own routes' and its included routers'."""
    for route in router.routes:
        if hasattr(route, "effective_route_contexts"):  # an included router (FastAPI >= 0.165)
            for context in route.effective_route_contexts():
                for serving in (context, context.starlette_route):
                    if getattr(serving, "dependant", None) is not None:
                        yield serving.dependant
        elif getattr(route, "dependant", None) is not None:
            yield route.dependant


_KEPT_MODELS: list[type[Any]] = []


def keep_response_models() -> None:
    """Hold the parametrized ``Resource`` models Tiled answers metadata requests with, so
    that pydantic's generic-model cache (weak references) keeps them between requests."""
    if _KEPT_MODELS:
        return
    from tiled.server import schemas

    links = [*schemas.resource_links_type_by_structure_family.values(), schemas.SelfLinkOnly]
    _KEPT_MODELS.append(schemas.Resource[schemas.NodeAttributes, schemas.ContainerLinks, schemas.ContainerMeta])
    _KEPT_MODELS.extend(schemas.Resource[schemas.NodeAttributes, link, schemas.EmptyDict] for link in links)


class StreamClosesAnswered:
    """Tiled's in-process app, answering a stream's close itself.

    TiledWriter ends each run by closing the live stream of every node it wrote (``DELETE
    /api/v1/stream/close/PATH``; 12 for a spectroscopy run), which a catalog without a
    streaming cache or webhooks (the embedded one: neither is configured) does nothing
    with but look the node up: 10-13 ms each, at every run's stop, while the command waits
    for the run to be catalogued.  Every other request, and the app's attributes (the
    client reads its settings from it), go to Tiled's app.
    """

    CLOSE_PREFIX = "/api/v1/stream/close/"

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "DELETE" and scope["path"].startswith(self.CLOSE_PREFIX):
            # What Tiled's endpoint answers (it returns nothing): 200, JSON null.
            headers = [(b"content-type", b"application/json"), (b"content-length", b"4")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"null"})
            return
        await self.app(scope, receive, send)
