"""API keys in bluesky-httpserver's own database: made for a named principal with a role.

Keys are stored hashed (sha256) by bluesky-httpserver; the secret exists only in the
answer that makes it and, for the stack's admin key, in `run/api-key` (mode 0600).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

from orchestrion.errors import InputError

from ._roles import PROVIDER, Role, RoleFile

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")


def check_name(name: str) -> str:
    """A principal name: letters, digits and ``_.@+-``, at most 64, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME.match(name):
        raise InputError(f"name: {name!r} is not a key holder's name (letters, digits, _.@+-; at most 64)")
    return name


def database_uri(run_dir: Path) -> str:
    return f"sqlite:///{run_dir / 'api-auth.sqlite'}"


def _engine(uri: str) -> Any:
    from bluesky_httpserver.database.core import UninitializedDatabase, check_database, initialize_database
    from sqlalchemy import create_engine

    engine = create_engine(uri, connect_args={"check_same_thread": False})
    try:
        check_database(engine)
    except UninitializedDatabase:
        initialize_database(engine)
    return engine


def create_key(uri: str, roles: RoleFile, name: str, role: Role, *, note: str = "") -> str:
    """A new key for ``name`` (made a principal with ``role`` if new); the secret, once."""
    from bluesky_httpserver.database import orm
    from bluesky_httpserver.database.core import create_user
    from sqlalchemy.orm import Session

    check_name(name)
    roles.assign(name, role)
    engine = _engine(uri)
    try:
        with Session(engine) as db:
            identity = db.query(orm.Identity).filter_by(provider=PROVIDER, id=name).first()
            principal = identity.principal if identity is not None else create_user(db, PROVIDER, name)
            # The same shape as bluesky-httpserver's own keys: 36 random bytes, hex.
            secret = secrets.token_bytes(36)
            db.add(
                orm.APIKey(
                    principal_id=principal.id, expiration_time=None, note=note[:1023] or f"{role.value} key",
                    scopes=["inherit"], first_eight=secret.hex()[:8], hashed_secret=hashlib.sha256(secret).digest(),
                )
            )  # fmt: skip
            db.commit()
    finally:
        engine.dispose()
    return secret.hex()


def write_secret(path: Path, secret: str) -> None:
    """Write a key file readable by its owner only (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
