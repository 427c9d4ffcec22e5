"""Where the stack's services listen: always on the loopback interface."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from orchestrion.config import OrchestrionConfig

HOST = "127.0.0.1"


def run_dir(config: OrchestrionConfig) -> Path:
    """Pid files, logs and service data of `orchestrion up`."""
    return config.home / "run"


def zmq_control_address(config: OrchestrionConfig) -> str:
    return f"tcp://{HOST}:{config.zmq_control_port}"


def zmq_info_address(config: OrchestrionConfig) -> str:
    return f"tcp://{HOST}:{config.zmq_info_port}"


def redis_address(config: OrchestrionConfig) -> str:
    return f"{HOST}:{config.redis_port}"


def tiled_uri(config: OrchestrionConfig) -> str:
    return f"http://{HOST}:{config.tiled_port}"


def api_url(config: OrchestrionConfig) -> str:
    """Where the stack's API server answers: its configured host (loopback by default), https with TLS."""
    scheme = "https" if config.api_tls_certfile is not None else "http"
    host = HOST if config.api_host in ("0.0.0.0", "::", "") else config.api_host
    return f"{scheme}://{host}:{config.api_port}"


def redis_name_prefix(config: OrchestrionConfig) -> str:
    # One Redis per stack already; the prefix keeps a shared Redis usable too.
    return "orchestrion"


def queue_server_api(config: OrchestrionConfig, *, timeout: float = 5.0) -> Any:
    """A bluesky-queueserver-api client for the stack's queue server (0MQ)."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    return REManagerAPI(
        zmq_control_addr=zmq_control_address(config),
        zmq_info_addr=zmq_info_address(config),
        timeout_recv=timeout,
    )


def tiled_api_key(config: OrchestrionConfig, *, create: bool = False) -> str | None:
    """The Tiled server's API key: from the configuration, else the stack's own key file.

    The key file (mode 0600, under run/) exists so that `up`, the worker and local clients
    agree on a key without it appearing in a command line, a log or a config dump.
    """
    if config.tiled_api_key is not None:
        return config.tiled_api_key.get_secret_value()
    path = run_dir(config) / "tiled-api-key"
    if path.is_file():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def close_api(api: Any) -> None:
    """Close a queue-server API client, 0MQ context included.

    bluesky-queueserver 0.0.25's client closes its socket but never terminates its
    zmq.Context, which then warns (ResourceWarning) when collected.
    """
    api.close()
    context = getattr(getattr(api, "_client", None), "_ctx", None)
    if context is not None:
        context.destroy(linger=0)
