"""The lab's services: Redis, the queue server, Tiled, the scheduler and the API server, on loopback.

`up`, `down` and `status` supervise them as processes with pid files and logs under
`$ORCHESTRION_HOME/run/`.
"""

from ._addresses import (
    HOST,
    api_url,
    close_api,
    queue_server_api,
    redis_address,
    run_dir,
    tiled_api_key,
    tiled_uri,
    zmq_control_address,
    zmq_info_address,
)
from ._supervisor import (
    SERVICES,
    Service,
    ServiceError,
    ServiceStatus,
    down,
    service,
    status,
    stop_service,
    tiled_paths,
    up,
)

__all__ = [
    "HOST",
    "SERVICES",
    "Service",
    "ServiceError",
    "ServiceStatus",
    "api_url",
    "close_api",
    "down",
    "queue_server_api",
    "redis_address",
    "run_dir",
    "service",
    "status",
    "stop_service",
    "tiled_api_key",
    "tiled_paths",
    "tiled_uri",
    "up",
    "zmq_control_address",
    "zmq_info_address",
]
