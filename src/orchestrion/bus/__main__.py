"""``python -m orchestrion.bus``: a post-processing worker, or replaying failed runs.

- ``worker --name NAME``: process runs from the bus until SIGTERM (what `orchestrion
  up` starts as ``post-processing-N``; on another machine, point it at the same Redis,
  Tiled and data directory).  The process supervises the worker: a worker that dies
  (a crash, SIGKILL) is started again under the same name, and takes its runs back.
- ``replay [RUN_UID ...]``: write again runs whose files could not be written (default:
  all of them); prints their uids.
- ``failed``: the runs waiting for a replay, with the reason (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from types import FrameType

from orchestrion.config import load_config
from orchestrion.errors import OrchestrionError

from ._connection import connect
from ._connectors import ConnectorRunner, load_connectors
from ._keys import BusKeys
from ._worker import BusWorker, replay

RESTART_DELAY = 1.0  # s before a dead worker is started again


def _supervise(name: str) -> int:
    """Run the worker in a child process; start it again whenever it dies."""
    logger = logging.getLogger(__name__)
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        child = subprocess.Popen([sys.executable, "-m", "orchestrion.bus", "worker", "--name", name, "--child"])
        code = child.wait()
        if stopping.is_set() or code == 0:
            return 0
        logger.error("post-processing worker %s (pid %d) died (%s); starting it again", name, child.pid, code)
        if stopping.wait(RESTART_DELAY):
            return 0


def _die_with_parent() -> None:
    """SIGKILL this process when its supervisor dies (Linux), so no orphan writes on."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _worker(name: str) -> int:
    _die_with_parent()
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
    worker.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    again = commands.add_parser("replay", help="write failed runs again")
    again.add_argument("runs", nargs="*")
    commands.add_parser("failed", help="runs waiting for a replay")
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "worker":
            return _worker(arguments.name) if arguments.child else _supervise(arguments.name)
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
