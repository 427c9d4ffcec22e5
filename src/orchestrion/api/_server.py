"""The API server process: bluesky-httpserver, configured for the stack, with Orchestrion's router.

`python -m orchestrion.api` (what `orchestrion up` starts as the service `api`) builds
bluesky-httpserver's app from a configuration made here (the queue server's 0MQ
addresses on loopback, key-only authentication, Orchestrion's roles, its own router),
wraps it in a request-size limit, and serves it with uvicorn, with TLS when a
certificate and key are configured.  On the first start it makes the admin key.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrion.config import OrchestrionConfig
from orchestrion.errors import InputError
from orchestrion.services import run_dir, zmq_control_address, zmq_info_address

from ._keys import create_key, database_uri, write_secret
from ._roles import PROVIDER, Role, RoleFile, roles_path

GRACEFUL_SHUTDOWN = 5.0  # s uvicorn gives open requests after SIGTERM

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def admin_key_path(config: OrchestrionConfig) -> Path:
    return run_dir(config) / "api-key"


def admin_key(config: OrchestrionConfig) -> str | None:
    """The stack's admin key (`run/api-key`), if this user can read it."""
    try:
        return admin_key_path(config).read_text().strip() or None
    except OSError:
        return None


def ensure_admin_key(config: OrchestrionConfig) -> None:
    """Make the admin key on the first start: `run/api-key`, mode 0600."""
    path = admin_key_path(config)
    if path.is_file():
        return
    secret = create_key(
        database_uri(run_dir(config)), RoleFile(roles_path(run_dir(config))), "admin", Role.ADMIN,
        note="the stack's admin key (run/api-key)",
    )  # fmt: skip
    write_secret(path, secret)


def httpserver_configuration(config: OrchestrionConfig) -> dict[str, Any]:
    """bluesky-httpserver's configuration for this stack (its config-file schema, in memory)."""
    directory = run_dir(config)
    return {
        "qserver_zmq_configuration": {
            "control_address": zmq_control_address(config),
            "info_address": zmq_info_address(config),
        },
        "server_configuration": {"custom_routers": ["orchestrion.api.router", "orchestrion.api.tiled_router"]},
        "authentication": {
            "providers": [{"provider": PROVIDER, "authenticator": "orchestrion.api:KeysOnly"}],
            # Signs session tokens, which only password logins make (none here): per start.
            "secret_keys": [secrets.token_hex(32)],
            "allow_anonymous_access": False,
        },
        "database": {"uri": database_uri(directory)},
        "api_access": {
            "policy": "orchestrion.api:RoleAccessControl",
            "args": {"roles_file": str(roles_path(directory))},
        },
    }


class BodyLimit:
    """ASGI wrapper: a request body beyond ``limit`` bytes is answered 413, unread by the app."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(send, self.limit)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail": "body: larger than {limit} bytes"}}'.encode()
    await send(
        {"type": "http.response.start", "status": 413,
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def build_app(config: OrchestrionConfig) -> ASGIApp:
    from bluesky_httpserver.app import build_app as build_httpserver_app
    from bluesky_httpserver.config import construct_build_app_kwargs

    app = build_httpserver_app(**construct_build_app_kwargs(httpserver_configuration(config)))
    return BodyLimit(app, config.api_max_body_bytes)


def uvicorn_options(config: OrchestrionConfig) -> dict[str, Any]:
    """Where and how uvicorn serves: host, port, TLS."""
    certificate, key = config.api_tls_certfile, config.api_tls_keyfile
    if (certificate is None) != (key is None):
        raise InputError("configuration: api_tls_certfile and api_tls_keyfile go together")
    options: dict[str, Any] = {
        "host": config.api_host,
        "port": config.api_port,
        # Access logs would carry an `?api_key=` a browser user typed; requests are
        # not logged line by line, errors still are.
        "access_log": False,
        "log_level": "info",
        # A request still open this long after SIGTERM (a client reading a large array
        # through the Tiled door, say) is cancelled: the stack's stop does not wait on it.
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
    }
    if certificate is not None and key is not None:
        options.update(ssl_certfile=str(certificate), ssl_keyfile=str(key))
    return options


def serve(config: OrchestrionConfig) -> None:
    """Run the API server until SIGTERM (or SIGINT): open live streams end at their next
    round, other requests get `GRACEFUL_SHUTDOWN` seconds."""
    import uvicorn

    from ._live import SERVER_STOPPING

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            SERVER_STOPPING.set()
            super().handle_exit(sig, frame)

    options = uvicorn_options(config)
    ensure_admin_key(config)
    Server(uvicorn.Config(build_app(config), **options)).run()
