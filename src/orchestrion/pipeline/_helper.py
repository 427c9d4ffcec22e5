"""The post-processing helper process's entry point (``python -m orchestrion.pipeline._helper``).

Not imported by the package: `-m` runs a module that is not yet in ``sys.modules``.
"""

import argparse
import logging
import os
import sys

from ._offload import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    arguments = argparse.ArgumentParser(description="orchestrion's post-processing helper (internal)")
    arguments.add_argument("--niceness", type=int, default=0)
    arguments.add_argument("--preload", action="append", default=[], help="a module to import at once")
    parsed = arguments.parse_args()
    serve(parsed.niceness, parsed.preload)
    # `serve` returned: its input ended, everything it was given was handled and its stage
    # closed (files and catalog).  What is left is the interpreter's teardown of Tiled's,
    # dask's, xarray's and h5py's modules, a second or more that the feeding process waits
    # for at its close for nothing; so the helper ends as a multiprocessing child does,
    # with `os._exit` once its output is flushed (ADR 0813).  A failure raises instead and
    # exits the usual way.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
