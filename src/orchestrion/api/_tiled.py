"""Tiled's read API through the API server's door (`/api/orchestrion/tiled/...`), with its keys.

The stack's Tiled server listens on loopback and has one key (Tiled's single-user
mode), which the stack's own processes use.  A client elsewhere has only the API
server's URL and an Orchestrion key: the API server authenticates the request (the
same `Authorization: Apikey ...` header the tiled client sends), checks the read
scope, and forwards it to Tiled with the stack's Tiled key added here, on the
server.  The key never leaves this process: client headers and cookies are not
forwarded, Tiled's cookies are not returned.

Tiled builds absolute links (`self`, `next`, `full`, ...) from the request it serves.
It reads the origin from `X-Forwarded-Host` and `X-Forwarded-Proto`, and the stack's
Tiled server takes the path prefix from `X-Forwarded-Prefix`
(`orchestrion.services`' Tiled process), so every link comes back pointing at this door.

Only reading is forwarded: GET and HEAD under `api/v1/`, and the four POST routes
with which the tiled client reads many columns at once (a column list too long for
a URL goes in the body).  Writes (PUT, PATCH, DELETE, other POSTs) are 405.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

# Tiled routes that read with a POST (tiled.client: DataFrameClient, the xarray
# variables, awkward buffers), under api/v1/.
READ_POSTS = ("table/partition/", "table/full/", "container/full/", "awkward/buffers/")

# What a client may tell Tiled about what it wants; nothing that says who it is.
FORWARDED_REQUEST_HEADERS = (
    "accept", "accept-encoding", "content-type", "if-none-match", "if-modified-since", "range", "user-agent",
)  # fmt: skip

# Hop-by-hop headers, and whatever could carry state or credentials back from Tiled.
DROPPED_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "set-cookie", "server", "date", "www-authenticate"}
)


class TiledRefusal(Exception):
    """A request the door does not forward; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_path(method: str, path: str) -> str:
    """The Tiled path a request may reach through the door (raises `TiledRefusal`)."""
    segments = path.split("/")
    if any(segment in ("..", ".") for segment in segments) or "\\" in path:
        raise TiledRefusal(422, f"path: {path!r} is not a path of Tiled's API")
    if not (path == "api/v1" or path.startswith("api/v1/")):
        raise TiledRefusal(404, f"path: {path!r} is not under Tiled's api/v1/")
    if method in ("GET", "HEAD"):
        return path
    if method == "POST" and path.removeprefix("api/v1/").startswith(READ_POSTS):
        return path
    raise TiledRefusal(405, f"method: {method} {path} would change the catalog; the door to Tiled only reads")


@dataclass(frozen=True)
class Forwarded:
    """Where the client reached the door: what Tiled builds its links from."""

    host: str
    scheme: str
    prefix: str

    def headers(self) -> dict[str, str]:
        return {"x-forwarded-host": self.host, "x-forwarded-proto": self.scheme, "x-forwarded-prefix": self.prefix}


class TiledDoor:
    """Forwards read requests to the stack's Tiled server with its key (one per API server process)."""

    def __init__(self, base_url: str, api_key: Callable[[], str | None], *, timeout: float = 60.0) -> None:
        """``api_key`` gives the Tiled key when asked (the stack may write it after this process starts)."""
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # Kept open for the life of the process: keep-alive connections to Tiled.
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout)
            self._loop = loop
        return self._client

    async def forward(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes,
        where: Forwarded,
    ) -> httpx.Response:
        """Send one checked request to Tiled; the response is open (stream it, then close it)."""
        target = check_path(method, path)
        sent = {name: headers[name] for name in FORWARDED_REQUEST_HEADERS if name in headers}
        sent.update(where.headers())
        key = self._key()
        if key is not None:
            sent["authorization"] = f"Apikey {key}"
        # A key in the query would be tried by Tiled (and set as its cookie): never forwarded.
        params = httpx.QueryParams([(name, value) for name, value in query if name != "api_key"])
        client = self._http()
        request = client.build_request(method, "/" + target, params=params, headers=sent, content=body or None)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise TiledRefusal(503, f"tiled: the stack's Tiled server does not answer ({type(exc).__name__})") from None
        if response.status_code in (401, 403):
            await response.aclose()
            raise TiledRefusal(502, "tiled: the stack's Tiled server refuses the API server's Tiled key")
        return response


def response_headers(response: httpx.Response) -> dict[str, str]:
    """Tiled's response headers that go back to the client (the body is passed through as sent)."""
    return {name: value for name, value in response.headers.items() if name.lower() not in DROPPED_RESPONSE_HEADERS}


def query_items(items: Any) -> list[tuple[str, str]]:
    return [(str(name), str(value)) for name, value in items]
