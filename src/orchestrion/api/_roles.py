"""Who may do what: Orchestrion's three roles as bluesky-httpserver scopes, and the key-only door.

bluesky-httpserver checks scopes on its own routes (the queue server's REST API) and
hands Orchestrion's routes the authenticated principal with its roles and scopes, so
one key works on both.  A principal's role is kept in a small file under the stack's
run directory, written when its key is made; the access policy reads it there.
"""

from __future__ import annotations

import json
import os
import threading
from enum import StrEnum
from pathlib import Path
from typing import Any

from bluesky_httpserver.authentication import Mode
from bluesky_httpserver.authorization import BasicAPIAccessControl

from orchestrion.errors import InputError


class Role(StrEnum):
    """What a key's holder may do."""

    ADMIN = "admin"  #: everything, keys included
    USER = "user"  #: read; submit, cancel their own jobs, set parameters, pause/resume/abort, switch devices
    OBSERVER = "observer"  #: read only


class Scope(StrEnum):
    """Orchestrion's own scopes (beside bluesky-httpserver's, on the same keys)."""

    READ = "orchestrion:read"
    SUBMIT = "orchestrion:submit"
    CANCEL_ANY = "orchestrion:cancel_any"  #: cancel or re-prioritise other people's jobs
    PARAMETERS = "orchestrion:parameters"
    CONTROL = "orchestrion:control"  #: pause, resume, abort the RunEngine
    DEVICES = "orchestrion:devices"
    KEYS = "orchestrion:keys"


# bluesky-httpserver's scopes for its own routes (its 0.0.14 list), by what they allow.
_QUEUE_SERVER_READ = frozenset(
    {"read:status", "read:queue", "read:history", "read:resources", "read:config", "read:monitor",
     "read:console", "read:lock", "read:testing"}
)  # fmt: skip
_QUEUE_SERVER_USER = _QUEUE_SERVER_READ | {"write:queue:edit", "write:plan:control"}
_QUEUE_SERVER_ADMIN = _QUEUE_SERVER_USER | {
    "write:queue:control", "write:manager:control", "write:execute", "write:history:edit", "write:permissions",
    "write:scripts", "write:config", "write:lock", "write:manager:stop", "write:testing", "user:apikeys",
    "admin:apikeys", "admin:read:principals", "admin:metrics",
}  # fmt: skip

ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.ADMIN: frozenset(_QUEUE_SERVER_ADMIN | {s.value for s in Scope}),
    Role.USER: frozenset(
        _QUEUE_SERVER_USER
        | {Scope.READ.value, Scope.SUBMIT.value, Scope.PARAMETERS.value, Scope.CONTROL.value, Scope.DEVICES.value}
    ),
    Role.OBSERVER: frozenset(_QUEUE_SERVER_READ | {Scope.READ.value}),
}

# The provider name of identities made here (the only provider the server knows).
PROVIDER = "orchestrion"


def roles_path(run_dir: Path) -> Path:
    return run_dir / "api-roles.json"


class RoleFile:
    """Principal name -> role, in one JSON file (read again whenever it changes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._roles: dict[str, Role] = {}

    def roles(self) -> dict[str, Role]:
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                return {}
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                loaded = json.loads(self.path.read_text() or "{}")
                self._roles = {str(name): Role(role) for name, role in loaded.items()}
                self._stamp = stamp
            return dict(self._roles)

    def assign(self, name: str, role: Role) -> None:
        """Record ``name``'s role; a name keeps the role it was first given."""
        roles = self.roles()
        known = roles.get(name)
        if known is not None and known is not role:
            raise InputError(f"name: '{name}' already holds the role '{known.value}'")
        roles[name] = role
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({n: r.value for n, r in sorted(roles.items())}, indent=1))
        os.chmod(temporary, 0o600)
        temporary.replace(self.path)


class RoleAccessControl(BasicAPIAccessControl):  # type: ignore[misc]  # untyped base
    """bluesky-httpserver's access policy with Orchestrion's roles, from the role file."""

    def __init__(self, *, roles_file: str) -> None:
        super().__init__(roles={role.value: {"scopes_set": sorted(scopes)} for role, scopes in ROLE_SCOPES.items()})
        self._file = RoleFile(Path(roles_file))

    def _is_user_known(self, username: str) -> bool:
        return username in self._file.roles() or bool(super()._is_user_known(username))

    def _collect_user_info(self, username: str) -> dict[str, Any]:
        role = self._file.roles().get(username)
        if role is None:
            return dict(super()._collect_user_info(username))
        return {"roles": [role.value]}


class KeysOnly:
    """The authentication provider of the stack: no passwords, API keys are the only way in.

    bluesky-httpserver stores keys (hashed) in its database only when a provider is
    configured; this one refuses every login, so a key made by an admin is the only
    credential there is.
    """

    mode = Mode.password

    async def authenticate(self, username: str, password: str) -> None:
        return None
