"""`python -m orchestrion.api`: the stack's API server (started by `orchestrion up`)."""

import logging

from orchestrion.config import load_config

from ._server import serve

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
serve(load_config())
