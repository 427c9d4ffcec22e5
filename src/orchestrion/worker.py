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
import json
import logging
import os
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from bluesky import RunEngine

from orchestrion.addresses import close_api, queue_server_api, worker_state_file
from orchestrion.bus import build_bus_pipeline
from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.errors import OrchestrionError
from orchestrion.experiment import AheadPreparer, ExperimentLibrary, NextRun, activate_starts, plan_request
from orchestrion.jobs import JobRecorder, JobStore, code_version, job_arguments, make_executor
from orchestrion.lab import Lab
from orchestrion.pipeline import DocumentPipeline, build_pipeline
from orchestrion.session import LabSession

logger = logging.getLogger(__name__)


def in_queue_server_worker() -> bool:
    """True inside the queue server's worker; False when plans are only introspected."""
    from bluesky_queueserver import is_re_worker_active

    return bool(is_re_worker_active())


class WorkerEnvironment:
    """The RunEngine, lab and pipeline of the worker process (a `LabSession`), and the job recorder."""

    def __init__(self, config: OrchestrionConfig, *, worker: bool) -> None:
        self.config = config
        self.code = code_version(config.plans_dir)
        # The queue server's worker drives the RunEngine itself: no call_returns_result.
        # Services mode: documents go onto the bus, and the post-processing workers
        # (`orchestrion up` starts them) write the runs; with none configured, this
        # process post-processes its runs itself, as embedded mode does.
        pipeline_factory = build_bus_pipeline if config.post_processing_workers else build_pipeline
        self.session = LabSession(config, run_engine=RunEngine({}), pipeline_factory=pipeline_factory)
        self.RE = self.session.RE
        self.recorder: JobRecorder | None = None
        self.ahead: AheadPreparer | None = None
        self._next_job: NextJob | None = None
        if worker:
            self.session.open()
            assert self.session.pipeline is not None
            self.recorder = JobRecorder(self.session.pipeline, config, self.code)
            self.session.subscribe(self.recorder)
            if self.session.lab is not None and config.prepare_next_job:
                # The next job's start is prepared while the current one runs (ADR 0313).
                self._next_job = NextJob(config, self.session.lab.library)
                self.ahead = AheadPreparer(self.session.lab, self._next_job)
                activate_starts(self.ahead)
                # One line per job in the queue server's log: prepared ahead, or why not
                # (the gap before a job is longer then); the worker's root logs warnings only.
                logging.getLogger(AheadPreparer.__module__).setLevel(logging.INFO)
            self.RE.md["code_commit"] = self.code[0] or ""
            self.RE.md["code_clean"] = bool(self.code[1])

    def close(self) -> None:
        """The preparation of the next job first (it reads the lab), then the recorder and the session."""
        if self.ahead is not None:
            activate_starts(None)
            self.ahead.close()
        if self._next_job is not None:
            self._next_job.close()
        if self.recorder is not None:
            self.recorder.close()
        self.session.close()

    @property
    def lab(self) -> Lab | None:
        return self.session.lab

    @property
    def pipeline(self) -> DocumentPipeline | None:
        return self.session.pipeline

    def namespace(self) -> dict[str, Any]:
        """What the queue server looks for: RE, the devices and the plans."""
        assert self.session.library is not None
        assert self.session.devices is not None
        plans = self.session.library.plans()
        for plan in plans.values():
            evaluate_signature(plan)
        config = self.config
        executor = make_executor(
            lambda: JobStore.open(config, durable=False), dict(plans), lambda: running_item_uid(config)
        )
        return {"RE": self.RE, **self.session.devices.namespace(), **plans, executor.__name__: executor}


class NextJob:
    """The job the executor would claim next, as its run will be asked for (it is only looked at).

    Called on the `AheadPreparer`'s thread, with a job table of its own.
    """

    def __init__(self, config: OrchestrionConfig, library: ExperimentLibrary) -> None:
        self._config = config
        self._library = library
        self._store: JobStore | None = None

    def __call__(self) -> NextRun | None:
        if self._store is None:
            self._store = JobStore.open(self._config, durable=False)
        job = self._store.next_waiting()
        # A plain queue-server item's job runs in its own item, not after this one.
        if job is None or job.item_uid is not None or job.experiment not in self._library.names():
            return None
        experiment = self._library.experiment(job.experiment)
        try:
            request = plan_request(experiment, **job_arguments(job))
        except (TypeError, OrchestrionError):
            return None  # its plan will refuse these arguments itself
        return NextRun(job.id, experiment, request)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def running_item_uid(config: OrchestrionConfig) -> str:
    """The uid of the item the queue server's manager says is running (asked from the worker)."""
    api = queue_server_api(config)
    try:
        uid = api.status(reload=True).get("running_item_uid")
    finally:
        close_api(api)
    if not uid:
        raise RuntimeError("the queue server reports no running item for the executor")
    return str(uid)


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
    """Fill the queue server's startup namespace; called by `profile/00-orchestrion.py`.

    In the worker, its pid and how its start-up went go to `worker_state_file`: the
    scheduler watches that pid (a worker killed under a job stays a zombie the manager
    does not notice), and `orchestrion up` reports a failed start-up's cause at once.
    """
    worker = in_queue_server_worker()
    config = load_config()
    logger.info("orchestrion worker: home %s, plans %s (pid %d)", config.home, config.plans_dir, os.getpid())
    if not worker:
        environment = WorkerEnvironment(config, worker=False)
        namespace.update(environment.namespace())
        return environment
    _write_state(config, "starting")
    try:
        environment = WorkerEnvironment(config, worker=True)
        namespace.update(environment.namespace())
    except BaseException as exc:
        _write_state(config, "failed", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        raise
    _write_state(config, "ready")
    return environment


def _write_state(config: OrchestrionConfig, state: str, error: str | None = None) -> None:
    path = worker_state_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "state": state, "error": error, "time": time.time()}))
    temporary.replace(path)


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
