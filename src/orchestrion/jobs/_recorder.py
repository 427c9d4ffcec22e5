"""The job recorder: what the worker knows of each run of a job, written to the job table."""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
from pathlib import Path

from event_model import DocumentRouter
from event_model.documents import RunStart, RunStop

from orchestrion.config import OrchestrionConfig
from orchestrion.experiment import flatten_ids
from orchestrion.pipeline import DocumentPipeline, file_name_for
from orchestrion.schema import JOB_ID_KEY

from ._store import NOT_ALL_WRITTEN, WRITTEN, JobStore

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
    the worker's death cuts short is still on record; at its stop, what the RunEngine
    measured, and its job leaves `running` (it is `writing`).  The RunEngine does not wait
    for post-processing: a thread of the recorder waits for each stopped run to be written
    (`DocumentPipeline.wait_catalogued`) and records what post-processing read back of it
    (points durable in its file, its catalog node, whether all of it was written), which
    ends a `writing` job `done` or `incomplete`.  A run of a job (its start document names
    the job id) is also written to the job's row; runs of plain queue-server items are
    filed by run uid, and the scheduler gives them to their job when the queue server
    reports the item's run uids.

    Subscribed after the document pipeline, so that at 'stop' the pipeline's run summary
    has counted the run's points and fits.
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
        self._stopped: queue.Queue[str | None] = queue.Queue()
        self._unconfirmed = 0
        self._idle = threading.Condition()
        self._confirmer = threading.Thread(target=self._confirm, name="orchestrion-job-recorder", daemon=True)
        self._confirmer.start()

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
        job_id, _ = job
        try:
            self._store.record_run_stop(
                summary.run_uid, job_id=job_id, measured_points=summary.measured_points,
                exit_status=str(doc.get("exit_status", "")), finished=float(doc["time"]),
                analysis=dict(summary.analysis),
            )  # fmt: skip
        except Exception:  # the run itself went fine: bookkeeping must not fail it
            logger.exception("job %s: could not record the stop of run %s", job_id, summary.run_uid)
        with self._idle:
            self._unconfirmed += 1
        self._stopped.put(summary.run_uid)
        return doc

    def _confirm(self) -> None:
        """In the recorder's thread: each stopped run, once post-processing has written it."""
        while (run_uid := self._stopped.get()) is not None:
            try:
                self._confirm_one(run_uid)
            except Exception:
                logger.exception("run %s: what post-processing wrote could not be recorded", run_uid)
            with self._idle:
                self._unconfirmed -= 1
                self._idle.notify_all()

    def _confirm_one(self, run_uid: str) -> None:
        catalogued = self._pipeline.wait_catalogued(run_uid)
        summary = self._pipeline.summaries.runs[run_uid]
        complete = catalogued and summary.status != "incomplete"
        if not complete and self._pipeline.catalog_pending(run_uid):
            # Its file is durable; the bus workers complete its catalog entry once Tiled
            # answers, and the stack's scheduler ends the job then (`BusConfirmations`).
            self._store.note_run_pending(
                run_uid, points=summary.points, hdf5=summary.hdf5,
                reason="its file is written; its catalog entry waits for Tiled",
            )  # fmt: skip
            return
        reason = None
        if not complete:
            where = f"; data in {summary.hdf5}" if summary.hdf5 else ""
            reason = summary.reason or (
                "post-processing did not confirm the run written (the worker's log says why)" + where
            )
        self._store.confirm_run(
            run_uid, written=WRITTEN if complete else NOT_ALL_WRITTEN, points=summary.points,
            hdf5=summary.hdf5, tiled=summary.tiled if catalogued else None, reason=reason,
        )  # fmt: skip

    def wait_confirmed(self, timeout: float = 300.0) -> bool:
        """Wait until every stopped run is recorded as post-processing wrote it."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unconfirmed == 0, timeout=timeout)

    def close(self) -> None:
        self._stopped.put(None)
        self._confirmer.join(timeout=30.0)
        self._store.close()


def latest_parameter_timestamp(start: RunStart) -> str | None:
    """The newest timestamp of the parameter snapshot in a start document (ISO text)."""
    nested = start.get("parameters") or {}
    if not isinstance(nested, dict):
        return None
    leaves = flatten_ids(nested, lambda v: isinstance(v, dict) and "timestamp" in v)
    stamps = [str(v["timestamp"]) for v in leaves.values()]
    return max(stamps) if stamps else None
