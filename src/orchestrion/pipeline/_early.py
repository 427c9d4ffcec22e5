"""The post-processing process started first: before the caller imports the pipeline.

`orchestrion run` starts it before it imports the session, the pipeline and bluesky
(a second or two), and `build_pipeline` adopts it (ADR 0813).  Nothing here imports
more than the configuration.
"""

from __future__ import annotations

from orchestrion.config import OrchestrionConfig

from ._offload import start_helper


def post_processing_imports(config: OrchestrionConfig) -> tuple[str, ...]:
    """What the post-processing process imports before it is handed its stage: seconds on
    a small machine (the embedded catalog's Tiled server above all), spent while the
    caller sets up."""
    modules: tuple[str, ...] = ("orchestrion.pipeline._pipeline",)
    if config.tiled_enabled:
        modules += ("tiled.client", "bluesky_tiled_plugins")
        if not config.tiled_uri:
            modules += ("tiled.catalog", "tiled.server.app")
    return modules


def start_post_processing(config: OrchestrionConfig) -> None:
    """Start the helper `build_pipeline(config)` will use, importing, handed nothing yet."""
    start_helper(config.post_processing_niceness, post_processing_imports(config))
