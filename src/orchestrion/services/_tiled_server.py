"""`python -m orchestrion.services._tiled_server`: the stack's Tiled server, in this process.

The same catalog that `tiled serve catalog CATALOG --init -w DATA -w sqlite:///TABLES`
serves, built with Tiled's own `from_uri` and `build_app` and run by uvicorn here, so
that the process `orchestrion up` started is the one listening on the port (no wrapper
whose death would leave the server orphaned) and nothing prints the API key: it comes
from `TILED_SINGLE_USER_API_KEY` in the environment and goes nowhere else.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from orchestrion.addresses import HOST
from orchestrion.config import load_config

from ._stack import tiled_paths

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]

# A path prefix of letters, digits and `_.-` segments: nothing a link could be bent with.
_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")


class ForwardedPrefix:
    """ASGI wrapper: a request with `X-Forwarded-Prefix: /p` is served as if the app were mounted at /p.

    Tiled takes the links' path from the ASGI ``root_path``; the API server's door sets
    the header, direct clients do not and get links without a prefix.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            prefix = dict(scope.get("headers") or []).get(b"x-forwarded-prefix", b"").decode("latin-1").rstrip("/")
            if prefix and _PREFIX.match(prefix) and ".." not in prefix:
                root = scope.get("root_path", "") + prefix
                # ASGI: `path` includes `root_path`; routing strips it again.
                scope = {**scope, "root_path": root, "path": prefix + scope["path"],
                         "raw_path": prefix.encode() + (scope.get("raw_path") or scope["path"].encode())}  # fmt: skip
        await self.app(scope, receive, send)


def main() -> int:
    import uvicorn
    from tiled.catalog import from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app

    from orchestrion.pipeline import readable_storage

    config = load_config()
    catalog, data, tables = tiled_paths(config)
    config.detectors_dir.mkdir(parents=True, exist_ok=True)
    # A lab that outgrows SQLite names a PostgreSQL catalog (tiled_catalog_uri).
    tree = from_uri(
        config.tiled_catalog_uri or f"sqlite:///{catalog}",
        writable_storage=[str(data), f"sqlite:///{tables}"],
        # The runs' files (their large arrays) and detectors' own files (StreamResource
        # documents) are registered, not copied.
        readable_storage=readable_storage(config.data_dir, config.detectors_dir),
        init_if_not_exists=True,
    )
    app = build_app(tree, Authentication(single_user_api_key=os.environ["TILED_SINGLE_USER_API_KEY"]))
    uvicorn.run(ForwardedPrefix(app), host=HOST, port=config.tiled_port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
