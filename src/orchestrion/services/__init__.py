"""The lab's services: Redis, the queue server, Tiled, the scheduler and the API server, on loopback.

`up`, `down` and `status` supervise them as processes with pid files and logs under
`$ORCHESTRION_HOME/run/`: each a `SupervisedProcess` (`_process.py`), declared with its
requirements and hooks as a `Service` of the stack (`_stack.py`).  Addresses and keys
live one layer down, in `orchestrion.addresses`, and are re-exported here.
"""

from typing import TYPE_CHECKING

from orchestrion._lazy import lazy_exports
from orchestrion.addresses import (
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

if TYPE_CHECKING:
    from ._process import Degraded, ServiceError, ServiceStatus, SupervisedProcess
    from ._stack import (
        SERVICES,
        Service,
        down,
        keep,
        post_processing_services,
        restart_dead,
        service,
        stack_services,
        start_order,
        status,
        stop_service,
        tiled_paths,
        up,
    )

# Imported when first used (`orchestrion._lazy`): a listing command must not pay for the
# stack behind the names it does not use (issue 16).
_EXPORTS = {
    "._process": ("Degraded", "ServiceError", "ServiceStatus", "SupervisedProcess"),
    "._stack": (
        "SERVICES",
        "Service",
        "down",
        "keep",
        "post_processing_services",
        "restart_dead",
        "service",
        "stack_services",
        "start_order",
        "status",
        "stop_service",
        "tiled_paths",
        "up",
    ),
}
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "HOST",
    "SERVICES",
    "Degraded",
    "Service",
    "ServiceError",
    "ServiceStatus",
    "SupervisedProcess",
    "api_url",
    "close_api",
    "down",
    "keep",
    "post_processing_services",
    "queue_server_api",
    "redis_address",
    "restart_dead",
    "run_dir",
    "service",
    "stack_services",
    "start_order",
    "status",
    "stop_service",
    "tiled_api_key",
    "tiled_paths",
    "tiled_uri",
    "up",
    "zmq_control_address",
    "zmq_info_address",
]
