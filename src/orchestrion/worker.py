"""What the queue server's worker runs at start-up (`profile/00-orchestrion.py`).

The worker of bluesky-queueserver executes the startup directory's scripts and takes
the RunEngine, the devices and the plans from the namespace they leave behind.  All
the logic lives here, where it is tested; the startup script only calls `populate`.

Two callers: the worker itself (open the lab, connect devices, subscribe the document
pipeline and the job recorder) and `qserver-list-plans-devices`, which only
introspects signatures (build devices and load plans; open, connect and write nothing).
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from bluesky import RunEngine
from event_model import DocumentRouter
from event_model.documents import RunStart, RunStop

from orchestrion.bus import build_bus_pipeline
from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.experiment import flatten_ids
from orchestrion.lab import Lab, activate, load_library_and_devices, open_lab
from orchestrion.pipeline import DocumentPipeline, build_pipeline
from orchestrion.schema import JOB_ID_KEY

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


def in_queue_server_worker() -> bool:
    """True inside the queue server's worker; False when plans are only introspected."""
    from bluesky_queueserver import is_re_worker_active

    return bool(is_re_worker_active())


class JobRecorder(DocumentRouter):
    """Writes what each run of a job produced (points, files, catalog node) to the job table.

    Subscribed after the document pipeline, so that at 'stop' the pipeline's run summary
    already names the HDF5 file and the Tiled node.
    """

    def __init__(
        self, pipeline: DocumentPipeline, config: OrchestrionConfig, code: tuple[str | None, bool | None]
    ) -> None:
        super().__init__()
        from orchestrion.jobs import JobStore

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


class WorkerEnvironment:
    """The RunEngine, lab and pipeline of the worker process."""

    def __init__(self, config: OrchestrionConfig, *, worker: bool) -> None:
        self.config = config
        self.RE = RunEngine({})
        self.code = code_version(config.plans_dir)
        library, devices = load_library_and_devices(config)
        self.library = library
        self.devices = devices
        self.lab: Lab | None = None
        self.pipeline: DocumentPipeline | None = None
        self.recorder: JobRecorder | None = None
        if worker:
            # Connecting runs in the RunEngine's loop: the RunEngine exists by now.
            self.lab = open_lab(config, library=library, devices=devices)
            activate(self.lab)
            # Services mode: documents go onto the bus, and the post-processing workers
            # (`orchestrion up` starts them) write the runs; with none configured, this
            # process post-processes its runs itself, as embedded mode does.
            self.pipeline = build_bus_pipeline(config) if config.post_processing_workers else build_pipeline(config)
            self.pipeline.subscribe(self.RE)
            self.recorder = JobRecorder(self.pipeline, config, self.code)
            self.RE.subscribe(self.recorder)
            self.RE.md["code_commit"] = self.code[0] or ""
            self.RE.md["code_clean"] = bool(self.code[1])

    def namespace(self) -> dict[str, Any]:
        """What the queue server looks for: RE, the devices and the plans."""
        plans = self.library.plans()
        for plan in plans.values():
            evaluate_signature(plan)
        return {"RE": self.RE, **self.devices.namespace(), **plans}


def evaluate_signature(plan: Any) -> None:
    """Give ``plan`` its signature with postponed annotations evaluated.

    bluesky-queueserver 0.0.25 reads plan signatures without evaluating string
    annotations (modules with ``from __future__ import annotations``): it stores
    ``'dict[str, Any] | None'`` as a quoted string, and validating any item then fails
    because ``Any`` is undefined where pydantic resolves it.  `inspect.signature` honours
    ``__signature__``, so the queue server sees real types (see ADR 0302).
    """
    if getattr(plan, "__signature__", None) is None:
        plan.__signature__ = inspect.signature(plan, eval_str=True)


def populate(namespace: MutableMapping[str, Any]) -> WorkerEnvironment:
    """Fill the queue server's startup namespace; called by `profile/00-orchestrion.py`."""
    worker = in_queue_server_worker()
    config = load_config()
    logger.info("orchestrion worker: home %s, plans %s (pid %d)", config.home, config.plans_dir, os.getpid())
    environment = WorkerEnvironment(config, worker=worker)
    namespace.update(environment.namespace())
    return environment


PLANS_AND_DEVICES_FILE = "existing_plans_and_devices.yaml"


def existing_plans_and_devices(config: OrchestrionConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the queue server will find in the worker: plan signatures and devices.

    Built from the library and the device configuration without opening or connecting
    anything, with bluesky-queueserver's own introspection.
    """
    from bluesky_queueserver.manager.profile_ops import existing_plans_and_devices_from_nspace

    environment = WorkerEnvironment(config, worker=False)
    plans, devices, _, _ = existing_plans_and_devices_from_nspace(
        nspace=environment.namespace(), ignore_invalid_plans=False
    )
    return plans, devices


def write_existing_plans_and_devices(config: OrchestrionConfig, directory: Path | None = None) -> Path:
    """(Re)generate `existing_plans_and_devices.yaml` in the startup directory."""
    from bluesky_queueserver.manager.profile_ops import save_existing_plans_and_devices

    directory = directory or config.profile_dir
    plans, devices = existing_plans_and_devices(config)
    save_existing_plans_and_devices(
        existing_plans=plans, existing_devices=devices, file_dir=str(directory),
        file_name=PLANS_AND_DEVICES_FILE, overwrite=True,
    )  # fmt: skip
    return directory / PLANS_AND_DEVICES_FILE


if __name__ == "__main__":
    # `python -m orchestrion.worker`: refresh the startup directory's list of plans and devices.
    print(write_existing_plans_and_devices(load_config()))
