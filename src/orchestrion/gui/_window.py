"""The main window: the pages as tabs, the live stream, the status bar."""

from __future__ import annotations

import logging
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtGui import QCloseEvent
from qtpy.QtWidgets import QApplication, QLabel, QMainWindow, QTabWidget, QWidget

from ._data import DataPage
from ._devices import DevicesPage
from ._experiments import EditorSettings, ExperimentsPage
from ._parameters import ParametersPage
from ._protocol import JobInfo, LiveEvent, LiveSubscription, StackClient, StackStatus
from ._queue import QueuePage
from ._tasks import Background, Mailbox

logger = logging.getLogger(__name__)

STATUS_POLL_MS = 5_000
JOBS_POLL_MS = 10_000
"""The live stream carries job changes; the poll only catches what a reconnect missed."""
HEALTH_COLOURS = {"ok": "#2ca02c", "degraded": "#ff7f0e", "unhealthy": "#d62728", "down": "#7f7f7f"}
PAGES = ("experiments", "queue", "data", "parameters", "devices")


class MainWindow(QMainWindow):
    """Orchestrion's GUI over one `StackClient`."""

    def __init__(self, client: StackClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.background = Background(self)
        self.status: StackStatus | None = None
        self._status_pending = False
        self.setWindowTitle("Orchestrion")
        self.resize(1400, 880)

        self.experiments = ExperimentsPage(client, self.background)
        self.queue = QueuePage(client, self.background)
        self.data = DataPage(client, self.background)
        self.parameters = ParametersPage(client, self.background)
        self.devices = DevicesPage(client, self.background)
        self.tabs = QTabWidget()
        for page, title in (
            (self.experiments, "Experiments"), (self.queue, "Queue and history"), (self.data, "Data"),
            (self.parameters, "Parameters"), (self.devices, "Devices"),
        ):  # fmt: skip
            self.tabs.addTab(page, title)
        self.setCentralWidget(self.tabs)

        self.services_label = QLabel("services: ...")
        self.principal_label = QLabel("")
        self.statusBar().addWidget(self.services_label, 1)
        self.statusBar().addPermanentWidget(self.principal_label)

        self.data.job_lookup = lambda job_id: self.queue.jobs.get(job_id)
        self.experiments.on_submitted.append(self._submitted)
        self.queue.on_resubmit.append(self.resubmit)

        self.live_mailbox = Mailbox(self.on_live, self)
        """The live stream's thread puts its messages here; the GUI thread takes them."""
        self.subscription: LiveSubscription | None = None

        self.status_timer = QTimer(self)
        self.status_timer.setInterval(STATUS_POLL_MS)
        self.status_timer.timeout.connect(self.refresh_status)
        self.jobs_timer = QTimer(self)
        self.jobs_timer.setInterval(JOBS_POLL_MS)
        self.jobs_timer.timeout.connect(self.queue.refresh)

    def start(self) -> None:
        """Load every page, subscribe to the live stream, start the polls."""
        self.refresh_status()
        self.experiments.refresh()
        self.queue.refresh()
        self.parameters.refresh()
        self.devices.refresh()
        self.background.call(self.client.prepare_catalog, None, lambda _error: None)  # the search reports errors
        self.data.search()
        self.subscription = self.client.subscribe(self.live_mailbox.put)
        self.status_timer.start()
        self.jobs_timer.start()

    # -- live ---------------------------------------------------------------------------

    def on_live(self, event: LiveEvent) -> None:
        if event.kind == "job" and event.job is not None:
            self.queue.update_job(event.job)
            if event.job.terminal and event.job.run_uid:
                # A calibration may have changed parameters; the finished run, with its fit,
                # is in the catalog now.
                self.parameters.refresh()
                if self.data.live_job == event.job.id:
                    self.data.show_run(event.job.run_uid)
        elif event.kind == "points" and event.job_id is not None:
            document = event.document
            self.data.on_points(event.job_id, document.get("points", []), document.get("keys"),
                                start=document.get("start"), descriptor=document.get("descriptor"))  # fmt: skip
        elif event.kind == "document":
            self.data.on_document(event.job_id, event.name, event.document)

    def _submitted(self, job: JobInfo) -> None:
        self.queue.update_job(job)

    def resubmit(self, job: JobInfo) -> None:
        """Load a job's settings into the experiment editor and show it."""
        experiment = self.experiments.experiments.get(job.experiment)
        shots = experiment.default_shots if experiment else 100
        self.experiments.load_settings(job.experiment, EditorSettings.from_request(job.request, job.priority, shots))
        self.tabs.setCurrentWidget(self.experiments)

    # -- status -------------------------------------------------------------------------

    def refresh_status(self) -> None:
        """Ask for the stack's status in the background; one request at a time, however slow."""
        if self._status_pending:
            return
        self._status_pending = True
        self.background.call(self.client.status, self.show_status, self._status_failed)

    def show_status(self, status: StackStatus) -> None:
        self._status_pending = False
        first = self.status is None or self.status.may_write != status.may_write
        self.status = status
        parts, tips = [], []
        for service in status.services:
            colour = HEALTH_COLOURS.get(service.health, "#2ca02c" if service.healthy else "#d62728")
            word = f" {service.health}" if not service.healthy and service.health else ""
            parts.append(f"<font color='{colour}'>●</font> {service.name}{word}")
            tips.append(f"{service.name}: {service.health or ('ok' if service.healthy else 'failing')}"
                        + (f" ({service.detail})" if service.detail else ""))  # fmt: skip
        self.services_label.setText("  ".join(parts))
        self.services_label.setToolTip("\n".join(tips))
        others = ", ".join(f"{who} ({role})" for who, role in status.connected)
        self.principal_label.setText(
            f"you: <b>{status.principal}</b> ({status.role})" + (f"   connected: {others}" if others else "")
        )
        if first:
            self.set_may_write(status.may_write)

    def _status_failed(self, error: Exception) -> None:
        self._status_pending = False
        self.services_label.setText(f"<font color='#d62728'>● API server: {error}</font>")

    def set_may_write(self, may: bool) -> None:
        """An observer sees everything and may change nothing."""
        for page in (self.experiments, self.queue, self.parameters, self.devices):
            page.set_may_write(may)

    # -- screenshots and shutdown -------------------------------------------------------

    def save_screenshots(self, directory: Path) -> list[Path]:
        """One PNG per page, as it is now."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for index, name in enumerate(PAGES):
            self.tabs.setCurrentIndex(index)
            QApplication.processEvents()
            path = directory / f"{index + 1}-{name}.png"
            if not self.grab().save(str(path)):
                raise OSError(f"cannot write {path}")
            written.append(path)
        return written

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        self.status_timer.stop()
        self.jobs_timer.stop()
        self.experiments.library_retry.stop()
        self.data.timer.stop()
        self.live_mailbox.stop()
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        self.background.wait()
