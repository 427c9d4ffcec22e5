"""Run every benchmark module (`bench/bench_*.py`), each through its `main()`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main() -> int:
    selected = sys.argv[1:]
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        if selected and path.stem.removeprefix("bench_") not in selected:
            continue
        print(f"== {path.stem}", flush=True)
        module = importlib.import_module(f"bench.{path.stem}")
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
