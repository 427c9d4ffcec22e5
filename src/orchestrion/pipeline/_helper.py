"""The post-processing helper process's entry point (``python -m orchestrion.pipeline._helper``).

Not imported by the package: `-m` runs a module that is not yet in ``sys.modules``.
"""

import argparse
import logging

from ._offload import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    arguments = argparse.ArgumentParser(description="orchestrion's post-processing helper (internal)")
    arguments.add_argument("--niceness", type=int, default=0)
    arguments.add_argument("--preload", action="append", default=[], help="a module to import at once")
    parsed = arguments.parse_args()
    serve(parsed.niceness, parsed.preload)
