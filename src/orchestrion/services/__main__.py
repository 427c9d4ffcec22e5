"""`python -m orchestrion.services`: the keeper that `orchestrion up` starts.

It restarts any service of the stack whose process died (SIGKILL, a crash), so the
queue goes on without a person; services stopped on purpose (`stop_service`) stay
down until `up`.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from orchestrion.config import load_config

from ._stack import keep


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    keep(load_config(), stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
