"""The API server: the stack's one authenticated HTTP door (bluesky-httpserver plus Orchestrion's router).

Clients on any machine need its URL and an API key.  Roles: `admin` (everything,
keys), `user` (submit, cancel their own jobs, set parameters, pause/resume/abort),
`observer` (read only).  The routes are under `/api/orchestrion/`; the queue server's
own REST routes (bluesky-httpserver's `/api/...`) take the same keys, and so does the
stack's Tiled catalog, read through `/tiled` (ADR 0510).
"""

from ._backend import Backend, Conflict, Forbidden, NotFound, without_credentials
from ._keys import check_name, create_key, database_uri
from ._roles import PROVIDER, ROLE_SCOPES, KeysOnly, Role, RoleAccessControl, RoleFile, Scope, roles_path
from ._routes import PREFIX, router, tiled_router
from ._server import (
    BodyLimit,
    admin_key,
    admin_key_path,
    build_app,
    ensure_admin_key,
    httpserver_configuration,
    serve,
    uvicorn_options,
)

__all__ = [
    "PREFIX",
    "PROVIDER",
    "ROLE_SCOPES",
    "Backend",
    "BodyLimit",
    "Conflict",
    "Forbidden",
    "KeysOnly",
    "NotFound",
    "Role",
    "RoleAccessControl",
    "RoleFile",
    "Scope",
    "admin_key",
    "admin_key_path",
    "build_app",
    "check_name",
    "create_key",
    "database_uri",
    "ensure_admin_key",
    "httpserver_configuration",
    "roles_path",
    "router",
    "serve",
    "tiled_router",
    "uvicorn_options",
    "without_credentials",
]
