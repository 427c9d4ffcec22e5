"""Jobs: the SQLite job table, submission in priority order, and the scheduler.

Every submission is a job row; an executor item in the queue server's queue runs the
waiting jobs back to back in priority order (higher number sooner, ties by submission
time; ADR 0310); the scheduler keeps that item placed among plain queue items and
records what the queue server did.
"""

from typing import TYPE_CHECKING

from orchestrion._lazy import lazy_exports

if TYPE_CHECKING:
    from ._executor import job_arguments, make_executor, run_job
    from ._recorder import JobRecorder, code_version, latest_parameter_timestamp
    from ._scheduler import EXIT_STATUS, WORKER_DESTROYED, Scheduler, read_heartbeat, read_worker_state
    from ._store import (
        ACTIVE,
        MIGRATIONS,
        NOT_ALL_WRITTEN,
        SCHEMA_VERSION,
        TERMINAL,
        WRITTEN,
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
        adopt_plain_items,
        adopted_job,
        cancel_job,
        change_priority,
        check_parameter_store,
        describe_item,
        insert_position,
        item_job_id,
        pause_running,
        place_executor,
        resume_paused,
        submit_job,
        validate_request,
    )

# Imported when first used (`orchestrion._lazy`): a listing command must not pay for the
# stack behind the names it does not use (issue 16).
_EXPORTS = {
    "._executor": ("job_arguments", "make_executor", "run_job"),
    "._recorder": ("JobRecorder", "code_version", "latest_parameter_timestamp"),
    "._scheduler": ("EXIT_STATUS", "WORKER_DESTROYED", "Scheduler", "read_heartbeat", "read_worker_state"),
    "._store": (
        "ACTIVE",
        "MIGRATIONS",
        "NOT_ALL_WRITTEN",
        "SCHEMA_VERSION",
        "TERMINAL",
        "WRITTEN",
        "Attempt",
        "Job",
        "JobStatus",
        "JobStore",
        "NewJob",
        "RunRecord",
        "UnknownJobError",
        "jobs_db_path",
    ),
    "._submit": (
        "JobRequest",
        "QueueServerError",
        "abort_running",
        "adopt_plain_items",
        "adopted_job",
        "cancel_job",
        "change_priority",
        "check_parameter_store",
        "describe_item",
        "insert_position",
        "item_job_id",
        "pause_running",
        "place_executor",
        "resume_paused",
        "submit_job",
        "validate_request",
    ),
}
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "ACTIVE",
    "EXIT_STATUS",
    "MIGRATIONS",
    "NOT_ALL_WRITTEN",
    "SCHEMA_VERSION",
    "TERMINAL",
    "WORKER_DESTROYED",
    "WRITTEN",
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
    "adopt_plain_items",
    "adopted_job",
    "cancel_job",
    "change_priority",
    "check_parameter_store",
    "code_version",
    "describe_item",
    "insert_position",
    "item_job_id",
    "job_arguments",
    "jobs_db_path",
    "latest_parameter_timestamp",
    "make_executor",
    "pause_running",
    "place_executor",
    "read_heartbeat",
    "read_worker_state",
    "resume_paused",
    "run_job",
    "submit_job",
    "validate_request",
]
