"""Loading a session into IPython: what `profile/ipython/startup` calls."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from orchestrion.config import load_config

from ._errors import install_error_handler
from ._session import ShellSession


def load_ipython_session(shell: Any) -> ShellSession:
    """Start a session and put it into IPython's namespace; print what is there."""
    install_error_handler(shell)
    config = load_config()
    configure_logging(config.home / "logs" / "session.log")
    session = ShellSession.start(config)
    shell.push(session.namespace())
    shell.events.register("pre_run_cell", lambda info: session.settle(shell.user_ns))
    print(session.banner())
    # Last: the prompt follows, and the catalog and the live table are made behind it.
    session.start_background()
    return session


class _NoTraceback(logging.Formatter):
    """Console log lines without tracebacks: the session prints errors itself."""

    def formatException(self, ei: Any) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        record.exc_text = ""
        saved, record.exc_info = record.exc_info, None
        try:
            return super().format(record)
        finally:
            record.exc_info = saved


def configure_logging(log_file: Path) -> None:
    """Full detail to the session's log file; warnings without tracebacks on the console.

    bluesky logs a failed plan's traceback before the RunEngine re-raises it; the session
    shows that error as one line, so the console leaves out bluesky's copy.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):  # replaces the CLI's plain stderr handler
        root.removeHandler(handler)
    to_file = logging.FileHandler(log_file)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(_NoTraceback("%(levelname)s %(name)s: %(message)s"))
    console.addFilter(lambda record: not (record.name.startswith("bluesky") and record.exc_info))
    root.addHandler(to_file)
    root.addHandler(console)
