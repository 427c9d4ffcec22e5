"""Jobs: the SQLite job table, submission in priority order, and the scheduler.

Every submission is a job row; its item enters the queue server's queue in priority
order (higher number sooner, ties by submission time); the scheduler records what the
queue server did with it.
"""

from ._recorder import JobRecorder, code_version, latest_parameter_timestamp
from ._scheduler import EXIT_STATUS, Scheduler, item_job_id, read_heartbeat
from ._store import (
    ACTIVE,
    MIGRATIONS,
    SCHEMA_VERSION,
    Job,
    JobStatus,
    JobStore,
    NewJob,
    UnknownJobError,
    jobs_db_path,
)
from ._submit import (
    JobRequest,
    QueueServerError,
    abort_running,
    cancel_job,
    default_submitter,
    insert_position,
    placement_from_table,
    submit_job,
    validate_request,
)

__all__ = [
    "ACTIVE",
    "EXIT_STATUS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Job",
    "JobRecorder",
    "JobRequest",
    "JobStatus",
    "JobStore",
    "NewJob",
    "QueueServerError",
    "Scheduler",
    "UnknownJobError",
    "abort_running",
    "cancel_job",
    "code_version",
    "default_submitter",
    "insert_position",
    "item_job_id",
    "jobs_db_path",
    "latest_parameter_timestamp",
    "placement_from_table",
    "read_heartbeat",
    "submit_job",
    "validate_request",
]
