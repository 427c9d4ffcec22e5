"""`python -m orchestrion.services._tiled_server`: the stack's Tiled server, in this process.

The same catalog that `tiled serve catalog CATALOG --init -w DATA -w sqlite:///TABLES`
serves, built with Tiled's own `from_uri` and `build_app` and run by uvicorn here, so
that the process `orchestrion up` started is the one listening on the port (no wrapper
whose death would leave the server orphaned) and nothing prints the API key: it comes
from `TILED_SINGLE_USER_API_KEY` in the environment and goes nowhere else.
"""

from __future__ import annotations

import os
import sys

from orchestrion.addresses import HOST
from orchestrion.config import load_config

from ._stack import tiled_paths


def main() -> int:
    import uvicorn
    from tiled.catalog import from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app

    config = load_config()
    catalog, data, tables = tiled_paths(config)
    # A lab that outgrows SQLite names a PostgreSQL catalog (tiled_catalog_uri).
    tree = from_uri(
        config.tiled_catalog_uri or f"sqlite:///{catalog}",
        writable_storage=[str(data), f"sqlite:///{tables}"],
        init_if_not_exists=True,
    )
    app = build_app(tree, Authentication(single_user_api_key=os.environ["TILED_SINGLE_USER_API_KEY"]))
    uvicorn.run(app, host=HOST, port=config.tiled_port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
