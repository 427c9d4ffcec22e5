"""The post-processing process started first: before the caller imports the pipeline.

`orchestrion run` starts it before it imports the session, the pipeline and bluesky
(a second or two), and `build_pipeline` adopts it (ADR 0813).  Better still, it adopts
the standby an earlier run left behind, imported already, and leaves one for the next
run when it ends (ADR 0814).  Nothing here imports more than the configuration.
"""

from __future__ import annotations

import os

from orchestrion.config import OrchestrionConfig

from ._offload import adopt_helper, helper_command, start_helper
from ._standby import spawn_standby


def post_processing_imports(config: OrchestrionConfig) -> tuple[str, ...]:
    """What the post-processing process imports before it is handed its stage: seconds on
    a small machine (the embedded catalog's Tiled server above all), spent while the
    caller sets up."""
    modules: tuple[str, ...] = ("orchestrion.pipeline._pipeline",)
    if config.tiled_enabled:
        modules += ("tiled.client", "bluesky_tiled_plugins")
        if not config.tiled_uri:
            # The embedded catalog's server side, and the storage its first run's arrays
            # and tables go to (imported by Tiled at the first write, otherwise at a stop).
            modules += ("tiled.catalog", "tiled.server.app", "tiled.adapters.zarr", "tiled.adapters.sql")
    return modules


# The environment this process had when it looked for a standby, before its imports
# added to it: the standby it leaves is keyed by, and started in, that one.
_environment_at_start: dict[str, str] = {}


def start_post_processing(config: OrchestrionConfig) -> bool:
    """Have the helper `build_pipeline(config)` will use ready: a standby adopted (True),
    or one started now, importing, handed nothing yet (False)."""
    _environment_at_start.update(os.environ)
    niceness, preload = config.post_processing_niceness, post_processing_imports(config)
    if config.post_processing_standby > 0 and adopt_helper(niceness, preload, config.home):
        return True
    start_helper(niceness, preload)
    return False


def leave_standby(config: OrchestrionConfig) -> None:
    """Leave a standby helper for the next command with this configuration (unless one
    waits already, or ``post_processing_standby`` is 0)."""
    if config.post_processing_standby > 0:
        command = helper_command(config.post_processing_niceness, post_processing_imports(config))
        spawn_standby(command, config.home, config.post_processing_standby, _environment_at_start or None)
