"""The job recorder: what the worker knows of each run of a job, written to the job table."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from event_model import DocumentRouter
from event_model.documents import RunStart, RunStop

from orchestrion.config import OrchestrionConfig
from orchestrion.experiment import flatten_ids
from orchestrion.pipeline import DocumentPipeline, file_name_for
from orchestrion.schema import JOB_ID_KEY

from ._store import JobStore

logger = logging.getLogger(__name__)


def code_version(directory: Path) -> tuple[str | None, bool | None]:
    """(git commit, tree clean) of the checkout holding ``directory``; (None, None) outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--", "."],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, not dirty


class JobRecorder(DocumentRouter):
    """Writes what each run produced (points, files, catalog node) to the job table's runs.

    At a run's start its uid, expected file and parameter time are recorded, so a run that
    the worker's death cuts short is still on record; at its stop, what it produced.  A
    run of a job (its start document names the job id) is also written to the job's row;
    runs of plain queue-server items are filed by run uid, and the scheduler gives them
    to their job when the queue server reports the item's run uids.

    Subscribed after the document pipeline, so that at 'stop' the pipeline's run summary
    already names the HDF5 file and the Tiled node.
    """

    def __init__(
        self, pipeline: DocumentPipeline, config: OrchestrionConfig, code: tuple[str | None, bool | None]
    ) -> None:
        super().__init__()
        self._pipeline = pipeline
        self._config = config
        self._store = JobStore.open(config, durable=False)
        self._code = code
        self._runs: dict[str, tuple[int | None, str | None]] = {}  # run uid -> (job id, parameter time)

    def start(self, doc: RunStart) -> RunStart | None:
        job_id = doc.get(JOB_ID_KEY)
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            job_id = None
        parameters_timestamp = latest_parameter_timestamp(doc)
        self._runs[doc["uid"]] = (job_id, parameters_timestamp)
        try:
            self._store.record_run_start(
                doc["uid"], job_id=job_id, started=float(doc["time"]),
                hdf5=str(self._config.data_dir / file_name_for(doc, self._config.hdf5_file_prefix)),
                parameters_timestamp=parameters_timestamp, code_commit=self._code[0], code_clean=self._code[1],
            )  # fmt: skip
        except Exception:  # bookkeeping must not fail the run
            logger.exception("job %s: could not record the start of run %s", job_id, doc["uid"])
        return doc

    def stop(self, doc: RunStop) -> RunStop | None:
        job = self._runs.pop(doc["run_start"], None)
        summary = self._pipeline.summaries.runs.get(doc["run_start"])
        if job is None or summary is None:
            return doc
        job_id, parameters_timestamp = job
        # A job is reported done only with its runs written (file closed, run in the
        # catalog); the summary names the file once post-processing has said so.
        catalogued = self._pipeline.wait_catalogued(summary.run_uid)
        try:
            self._store.record_run(
                job_id,
                run_uid=summary.run_uid,
                points=summary.points,
                hdf5=summary.hdf5,
                tiled=summary.tiled if catalogued else None,
                parameters_timestamp=parameters_timestamp,
                code_commit=self._code[0],
                code_clean=self._code[1],
                analysis=dict(summary.analysis),
                exit_status=str(doc.get("exit_status", "")),
                finished=float(doc["time"]),
            )
        except Exception:  # the run itself went fine: bookkeeping must not fail it
            logger.exception("job %s: could not record run %s in the job table", job_id, summary.run_uid)
        return doc

    def close(self) -> None:
        self._store.close()


def latest_parameter_timestamp(start: RunStart) -> str | None:
    """The newest timestamp of the parameter snapshot in a start document (ISO text)."""
    nested = start.get("parameters") or {}
    if not isinstance(nested, dict):
        return None
    leaves = flatten_ids(nested, lambda v: isinstance(v, dict) and "timestamp" in v)
    stamps = [str(v["timestamp"]) for v in leaves.values()]
    return max(stamps) if stamps else None
