"""Assembling the callback chain that a RunEngine's documents flow through."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bluesky import RunEngine

from orchestrion.config import OrchestrionConfig

from ._summary import RunSummaryCollector

logger = logging.getLogger(__name__)

DocumentCallback = Callable[[str, dict[str, Any]], Any]


class DocumentPipeline:
    """The callbacks of one process, in the order documents reach them."""

    def __init__(self, callbacks: list[DocumentCallback] | None = None) -> None:
        self.summaries = RunSummaryCollector()
        self.callbacks: list[DocumentCallback] = list(callbacks or [])
        self._tokens: list[int] = []

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.summaries(name, doc)  # type: ignore[arg-type]
        for callback in self.callbacks:
            callback(name, doc)

    def subscribe(self, RE: RunEngine) -> None:  # noqa: N803 - bluesky's name for it
        self._tokens.append(RE.subscribe(self))

    def unsubscribe(self, RE: RunEngine) -> None:  # noqa: N803
        for token in self._tokens:
            RE.unsubscribe(token)
        self._tokens.clear()

    def close(self) -> None:
        for callback in self.callbacks:
            close = getattr(callback, "close", None)
            if callable(close):
                close()


def build_pipeline(config: OrchestrionConfig) -> DocumentPipeline:
    """The pipeline the configuration asks for."""
    return DocumentPipeline()
