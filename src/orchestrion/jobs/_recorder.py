"""The job recorder: what the worker knows of each run of a job, written to the job table."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from event_model import DocumentRouter
from event_model.documents import RunStart, RunStop

from orchestrion.config import OrchestrionConfig
from orchestrion.experiment import flatten_ids
from orchestrion.pipeline import DocumentPipeline
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
    """Writes what each run of a job produced (points, files, catalog node) to the job table.

    Subscribed after the document pipeline, so that at 'stop' the pipeline's run summary
    already names the HDF5 file and the Tiled node.
    """

    def __init__(
        self, pipeline: DocumentPipeline, config: OrchestrionConfig, code: tuple[str | None, bool | None]
    ) -> None:
        super().__init__()
        self._pipeline = pipeline
        self._store = JobStore.open(config, durable=False)
        self._code = code
        self._runs: dict[str, tuple[int, str | None]] = {}  # run uid -> (job id, parameter time)

    def start(self, doc: RunStart) -> RunStart | None:
        job_id = doc.get(JOB_ID_KEY)
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            self._runs[doc["uid"]] = (job_id, latest_parameter_timestamp(doc))
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
