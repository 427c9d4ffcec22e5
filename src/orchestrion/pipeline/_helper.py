"""The post-processing helper process's entry point (``python -m orchestrion.pipeline._helper``).

Not imported by the package: `-m` runs a module that is not yet in ``sys.modules``.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from ._offload import preload_modules, serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    arguments = argparse.ArgumentParser(description="orchestrion's post-processing helper (internal)")
    arguments.add_argument("--niceness", type=int, default=0)
    arguments.add_argument("--preload", action="append", default=[], help="a module to import at once")
    arguments.add_argument("--standby", type=Path, help="wait on this socket to be adopted (ADR 0814)")
    arguments.add_argument("--standby-home", type=Path, help="the standby ends when this directory is gone")
    arguments.add_argument("--standby-seconds", type=float, default=600.0, help="the standby's longest wait")
    parsed = arguments.parse_args()
    if parsed.standby is not None:
        from ._standby import Standby, detach

        detach()
        # Everything a standby does before it is adopted is background work: at the
        # niceness its documents will be handled at (a niceness cannot be raised back).
        os.setpriority(os.PRIO_PROCESS, 0, parsed.niceness)
        # Listening before the imports: a command that comes while they run adopts it.
        standby = Standby(parsed.standby, parsed.standby_home, parsed.standby_seconds)
        preload_modules(parsed.preload)
        if not standby.wait():
            os._exit(0)  # nobody came: nothing was handed over, nothing to finish
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
