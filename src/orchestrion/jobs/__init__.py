"""Jobs: the SQLite job table, submission in priority order, and the scheduler.

Every submission is a job row; its item enters the queue server's queue in priority
order (higher number sooner, ties by submission time); the scheduler records what the
queue server did with it.
"""

from ._recorder import JobRecorder, code_version, latest_parameter_timestamp
from ._scheduler import EXIT_STATUS, WORKER_DESTROYED, Scheduler, item_job_id, read_heartbeat, read_worker_state
from ._store import (
    ACTIVE,
    MIGRATIONS,
    SCHEMA_VERSION,
    Attempt,
    Job,
    JobStatus,
    JobStore,
    NewJob,
    RunRecord,
    UnknownJobError,
    jobs_db_path,
)
from ._submit import (
    JobRequest,
    QueueServerError,
    abort_running,
    cancel_job,
    check_parameter_store,
    describe_item,
    insert_position,
    pause_running,
    placement_from_table,
    resume_paused,
    submit_job,
    validate_request,
)

__all__ = [
    "ACTIVE",
    "EXIT_STATUS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "WORKER_DESTROYED",
    "Attempt",
    "Job",
    "JobRecorder",
    "JobRequest",
    "JobStatus",
    "JobStore",
    "NewJob",
    "QueueServerError",
    "RunRecord",
    "Scheduler",
    "UnknownJobError",
    "abort_running",
    "cancel_job",
    "check_parameter_store",
    "code_version",
    "describe_item",
    "insert_position",
    "item_job_id",
    "jobs_db_path",
    "latest_parameter_timestamp",
    "pause_running",
    "placement_from_table",
    "read_heartbeat",
    "read_worker_state",
    "resume_paused",
    "submit_job",
    "validate_request",
]
