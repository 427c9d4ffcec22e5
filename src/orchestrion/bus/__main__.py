"""``python -m orchestrion.bus``: a post-processing worker, or replaying failed runs.

- ``worker --name NAME``: process runs from the bus until SIGTERM (what `orchestrion
  up` starts as ``post-processing-N``; on another machine, point it at the same Redis,
  Tiled and data directory).
- ``replay [RUN_UID ...]``: write again runs whose files could not be written (default:
  all of them); prints their uids.
- ``failed``: the runs waiting for a replay, with the reason (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from types import FrameType

from orchestrion.config import load_config
from orchestrion.errors import OrchestrionError

from ._connection import connect
from ._connectors import ConnectorRunner, load_connectors
from ._keys import BusKeys
from ._worker import BusWorker, replay


def _worker(name: str) -> int:
    config = load_config()
    if config.post_processing_niceness > 0:
        # Before any thread starts: later threads inherit the main thread's niceness.
        os.setpriority(os.PRIO_PROCESS, 0, config.post_processing_niceness)
    worker = BusWorker(config, name)
    factories = load_connectors(config.bus_connectors)
    connectors = [ConnectorRunner(config, connector, factory, name) for connector, factory in factories.items()]

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for runner in connectors:
        runner.start()
    logger = logging.getLogger(__name__)
    logger.info("post-processing worker %s (pid %d) on %s", name, os.getpid(), socket.gethostname())
    worker.serve()
    for runner in connectors:
        runner.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m orchestrion.bus", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="process runs from the bus")
    worker.add_argument("--name", default=f"post-processing-{socket.gethostname()}-{os.getpid()}")
    again = commands.add_parser("replay", help="write failed runs again")
    again.add_argument("runs", nargs="*")
    commands.add_parser("failed", help="runs waiting for a replay")
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "worker":
            return _worker(arguments.name)
        config = load_config()
        if arguments.command == "replay":
            for run_uid in replay(config, arguments.runs or None):
                print(run_uid)
            return 0
        client = connect(config)
        failed = {k.decode(): v.decode() for k, v in client.hgetall(BusKeys().failed).items()}
        client.close()
        print(json.dumps(failed, indent=2))
        return 0
    except (OrchestrionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
