"""`python -m orchestrion.jobs`: the scheduler process that `orchestrion up` starts."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from orchestrion.config import load_config

from ._scheduler import Scheduler


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheduler = Scheduler(config)
    while not stop.is_set():
        try:
            # The queue starts after the first sync has decided on pushed-back copies.
            scheduler.prepare(autostart=False)
            break
        except Exception as exc:  # the queue server may still be starting
            logging.getLogger("orchestrion.jobs").warning("waiting for the queue server: %s", exc)
            stop.wait(1.0)
    scheduler.serve(stop)
    scheduler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
