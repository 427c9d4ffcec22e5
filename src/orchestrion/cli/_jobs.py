"""`orchestrion submit`, `jobs`, `job`, `cancel`, `pause`, `resume`, `abort`: the queue."""

from __future__ import annotations

import sys
from typing import Any

import click

from ._common import config_from, json_option, print_json, reports_errors
from ._run import parse_assignments, run_options

STATUSES = ["submitted", "queued", "running", "paused", "writing", "done", "incomplete", "failed", "cancelled"]


def api_available(config: Any) -> bool:
    """Whether commands go through the API server: one is named, or the local stack runs one."""
    from orchestrion.services import service

    return config.api_url is not None or service("api").pid(config) is not None


def _client(ctx: click.Context) -> Any:
    """The API client of the configured stack (the only way job commands reach it)."""
    from orchestrion.client import Client

    return Client.local(config_from(ctx))


_LINE = (
    "{id:>5}  {status:9}  {priority:>4}  {source:11}  {experiment:22}  {submitter:12}  {run:8}  {attempts:>3}  {note}"
)
HEADER = _LINE.format(
    id="ID",
    status="STATUS",
    priority="PRIO",
    source="SOURCE",
    experiment="EXPERIMENT",
    submitter="SUBMITTER",
    run="RUN",
    attempts="TRY",
    note="ERROR",
).rstrip()


def _job_line(job: dict[str, Any]) -> str:
    return _LINE.format(
        id=job["id"], status=job["status"], priority=job["priority"], source=job.get("source") or "",
        experiment=job["experiment"], submitter=job["submitter"],
        run=job["run_uid"][:8] if job.get("run_uid") else "-", attempts=max(1, len(job.get("attempts") or [])),
        note=job.get("error") or "",
    ).rstrip()  # fmt: skip


def _job_details(document: dict[str, Any]) -> None:
    from orchestrion.analysis import fit_lines  # lmfit and scipy: seconds, for this command alone

    for key in ("id", "experiment", "status", "priority", "submitter", "user_group", "run_uid", "points",
                "points_total", "hdf5", "tiled", "error", "parent", "parameters_timestamp", "code_commit",
                "code_clean"):  # fmt: skip
        if document.get(key) is not None:
            click.echo(f"{key:21} {document[key]}")
    if document.get("scan"):
        click.echo(f"{'scan':21} {' '.join(document['scan'])}")
    for key, text in fit_lines(document.get("analysis") or {}):
        click.echo(f"{'fit ' + key:21} {text}")


def _local_rows(ctx: click.Context, status: str | None = None, job_id: int | None = None) -> Any:
    """The job table read in place, when no API server runs (nothing to submit to either)."""
    from orchestrion.jobs import JobStatus, JobStore

    store = JobStore.open(config_from(ctx))
    try:
        if job_id is not None:
            return store.get(job_id).to_dict()
        return [job.to_dict() for job in store.list(JobStatus(status) if status else None)]
    finally:
        store.close()


@click.command()
@click.argument("experiment")
@run_options
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs sooner; ties: first come.")
@click.option("--wait", is_flag=True, help="Wait until the job has run; exit status 1 unless it is done.")
@json_option
@click.pass_context
@reports_errors
def submit(
    ctx: click.Context, experiment: str, assignments: tuple[str, ...], scans: tuple[str, ...],
    shots: int | None, repetitions: int, pattern: str, priority: int, wait: bool, as_json: bool,
) -> None:  # fmt: skip
    """Queue EXPERIMENT on the stack's RunEngine, through its API server (validated there first)."""
    with _client(ctx) as client:
        handle = client.submit(
            experiment, scan=list(scans) if scans else None, parameters=parse_assignments(assignments),
            shots=shots, repetitions=repetitions, pattern=pattern, priority=priority,
        )  # fmt: skip
        job = handle.wait() if wait else handle.refresh()
    if as_json:
        print_json(job)
    elif wait:
        click.echo(HEADER)
        click.echo(_job_line(job))
    else:
        click.echo(f"job {job['id']} {job['status']}")
    if wait and job["status"] != "done":
        sys.exit(1)


@click.command()
@click.option("--status", "status", type=click.Choice(STATUSES), default=None, help="Only jobs in this state.")
@json_option
@click.pass_context
@reports_errors
def jobs(ctx: click.Context, status: str | None, as_json: bool) -> None:
    """The job table, newest first (through the API server when one runs)."""
    if api_available(config_from(ctx)):
        with _client(ctx) as client:
            rows = client.jobs(status)
    else:
        rows = _local_rows(ctx, status)
    if as_json:
        print_json(rows)
        return
    click.echo(HEADER)
    for job in rows:
        click.echo(_job_line(job))


@click.command()
@click.argument("job_id", type=int)
@json_option
@click.pass_context
@reports_errors
def job(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """One job: status, run uid, points, HDF5 file, Tiled node, code version."""
    if api_available(config_from(ctx)):
        with _client(ctx) as client:
            row = client.job_record(job_id)
    else:
        row = _local_rows(ctx, job_id=job_id)
    if as_json:
        print_json(row)
    else:
        _job_details(row)


@click.command()
@click.argument("job_id", type=int)
@json_option
@click.pass_context
@reports_errors
def cancel(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Remove a queued job from the queue, or abort it if it is running."""
    with _client(ctx) as client:
        row = client.cancel(job_id)
        if row["status"] not in ("done", "incomplete", "failed", "cancelled"):
            row = client.job(job_id).wait(timeout=60)
    print_json(row) if as_json else click.echo(f"job {row['id']} {row['status']}")


@click.command()
@click.option("--immediate", is_flag=True, help="Pause at once, not at the next checkpoint.")
@click.pass_context
@reports_errors
def pause(ctx: click.Context, immediate: bool) -> None:
    """Pause the running job (the queue waits with it)."""
    with _client(ctx) as client:
        click.echo(client.pause(immediate=immediate))


@click.command()
@click.pass_context
@reports_errors
def resume(ctx: click.Context) -> None:
    """Resume the paused job."""
    with _client(ctx) as client:
        click.echo(client.resume())


@click.command()
@click.pass_context
@reports_errors
def abort(ctx: click.Context) -> None:
    """Abort the running job (recorded cancelled); the queue goes on with the next.

    With nothing running, says so and exits with status 2.
    """
    with _client(ctx) as client:
        click.echo(client.abort())
