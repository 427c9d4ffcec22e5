"""The embedded catalog's in-process Tiled app, without its per-request waste (`_tiled_app`)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.dependencies.utils
import pytest
from tiled.server import schemas
from tiled.server.settings import get_settings

from orchestrion.pipeline import CatalogConnection, open_embedded_catalog
from orchestrion.pipeline._tiled_app import (
    ResolvedOverrides,
    StreamClosesAnswered,
    resolve_dependency_overrides,
    route_dependants,
)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[CatalogConnection]:
    connection = open_embedded_catalog(tmp_path)
    yield connection
    connection.close()


def tiled_app(connection: CatalogConnection) -> Any:
    in_front = connection.client.context.http_client.app
    assert isinstance(in_front, StreamClosesAnswered)
    return in_front.app


def calls_in(dependant: Any) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from calls_in(sub)


def test_the_settings_override_is_in_every_route_and_no_request_analyses_dependencies(
    catalog: CatalogConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tiled_app(catalog)
    assert isinstance(app.dependency_overrides, ResolvedOverrides)
    assert not app.dependency_overrides  # FastAPI's per-request path is not taken
    override = app.dependency_overrides[get_settings]  # still readable: Tiled's start-up reads it
    calls = [call for dependant in route_dependants(app.router) for call in calls_in(dependant)]
    assert override in calls
    assert get_settings not in calls

    analysed: list[Any] = []
    real = fastapi.dependencies.utils.get_dependant

    def counted(**arguments: Any) -> Any:
        analysed.append(arguments["call"])
        return real(**arguments)

    monkeypatch.setattr(fastapi.dependencies.utils, "get_dependant", counted)
    node = catalog.client.create_container("run", metadata={"start": {"uid": "run"}})
    node.update_metadata(metadata={"experiment": "spectroscopy"})
    assert catalog.client["run"].metadata["experiment"] == "spectroscopy"
    assert analysed == []


def test_an_override_set_after_the_resolution_is_refused(catalog: CatalogConnection) -> None:
    app = tiled_app(catalog)
    with pytest.raises(TypeError, match="resolved into its routes already"):
        app.dependency_overrides[get_settings] = lambda: None


def test_the_response_models_tiled_parametrizes_per_request_survive_garbage_collection(
    catalog: CatalogConnection,
) -> None:
    # pydantic's cache of parametrized models holds weak references: kept, the class
    # outlives a collection, and the next request finds it instead of building it again.
    for links in (schemas.DataFrameLinks, schemas.ArrayLinks, schemas.SelfLinkOnly):
        model = weakref.ref(schemas.Resource[schemas.NodeAttributes, links, schemas.EmptyDict])
        gc.collect()
        assert model() is not None


def test_overrides_no_route_depends_on_are_left_as_they_were() -> None:
    # A real FastAPI app whose override reaches no route this walk knows: nothing is
    # resolved, so the override must keep working the ordinary (per-request) way.
    from fastapi import FastAPI

    def setting() -> str:
        return "default"

    app = FastAPI()
    app.dependency_overrides[setting] = lambda: "overridden"
    assert resolve_dependency_overrides(app) == 0
    assert not isinstance(app.dependency_overrides, ResolvedOverrides)
    assert app.dependency_overrides  # FastAPI still applies it at each request
