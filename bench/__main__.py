"""`python -m bench [GROUP...]`: run the bench collectors (all by default) into one report.

Every ``bench/bench_*.py`` is imported, and each registers its collectors
(`bench._report.collector`).  The whole run writes ``bench/results/latest.json`` and
``latest.md``; a selection writes ``bench/results/GROUP.json`` (and ``.md``) instead.
``python -m bench.readme`` then rewrites the README's performance table from
``latest.json``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from bench._report import run


def main() -> int:
    # What went wrong in a pipeline (a helper process that died, and how) reaches the log.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    selected = sys.argv[1:]
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        importlib.import_module(f"bench.{path.stem}")
    report = run(selected, "-".join(selected) if selected else "latest")
    missed = [f["name"] for f in report["figures"] if f["goal_met"] is False]
    print(
        f"{len(report['figures'])} figures, {len(missed)} goals missed" + (f": {'; '.join(missed)}" if missed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
