"""Keeping one stage's failure on one run from stopping the run or the other stages."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class Guarded:
    """Calls ``callback``; if it raises on a run's document, logs it with the run uid and
    sends it no more of that run's documents (its other runs go on)."""

    def __init__(self, callback: Callable[[str, dict[str, Any]], Any], label: str) -> None:
        self.callback = callback
        self.label = label
        self._descriptor_run: dict[str, str] = {}
        self._failed: set[str] = set()

    def _run_of(self, name: str, doc: dict[str, Any]) -> str | None:
        if name == "start":
            return str(doc.get("uid"))
        if name == "descriptor":
            self._descriptor_run[doc.get("uid", "")] = str(doc.get("run_start"))
            return str(doc.get("run_start"))
        if name in ("event", "event_page"):
            return self._descriptor_run.get(doc.get("descriptor", ""))
        if name == "stop":
            return str(doc.get("run_start"))
        return None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        run_uid = self._run_of(name, doc)
        if run_uid is not None and run_uid in self._failed:
            return
        try:
            self.callback(name, doc)
        except Exception:
            logger.exception("%s failed on a %s document of run %s; it skips the rest of that run",
                             self.label, name, run_uid or "unknown")  # fmt: skip
            if run_uid is not None:
                self._failed.add(run_uid)
        if name == "stop" and run_uid is not None:
            self._failed.discard(run_uid)
            self._descriptor_run = {k: v for k, v in self._descriptor_run.items() if v != run_uid}

    def close(self) -> None:
        close = getattr(self.callback, "close", None)
        if callable(close):
            close()
