"""The queue and history page: every job, live, and what may be done to it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._protocol import JobInfo, StackClient
from ._tasks import Background

COLUMNS = ("Id", "Experiment", "Status", "Priority", "Submitter", "Submitted", "Started", "Finished", "Points", "Error")
PROGRESS_COLUMN = COLUMNS.index("Points")
STATUS_COLOURS = {
    "running": "#1f77b4", "writing": "#17becf", "done": "#2ca02c", "incomplete": "#ff7f0e",
    "failed": "#d62728", "cancelled": "#7f7f7f",
}  # fmt: skip


def _when(stamp: datetime | None) -> str:
    return stamp.astimezone().strftime("%Y-%m-%d %H:%M:%S") if stamp else ""


class QueuePage(QWidget):
    """Jobs queued, running and finished; cancel, priority, resubmit, pause, resume, abort."""

    def __init__(self, client: StackClient, background: Background, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client, self.background = client, background
        self.jobs: dict[int, JobInfo] = {}
        self._updated: dict[int, float] = {}
        self.on_resubmit: list[Callable[[JobInfo], None]] = []
        """Called with the job whose settings are to be loaded into the editor."""
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._update_buttons)

        self.cancel_button = QPushButton("Cancel job")
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.priority = QSpinBox()
        self.priority.setRange(-1000, 1000)
        self.priority_button = QPushButton("Set priority")
        self.priority_button.clicked.connect(self.set_priority_selected)
        self.resubmit_button = QPushButton("Resubmit ...")
        self.resubmit_button.clicked.connect(self._resubmit_selected)
        self.pause_button = QPushButton("Pause")
        self.pause_button.clicked.connect(lambda: self._control(lambda: self.client.pause(), "pause"))
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(lambda: self._control(self.client.resume, "resume"))
        self.abort_button = QPushButton("Abort")
        self.abort_button.clicked.connect(lambda: self._control(self.client.abort, "abort"))
        self.message = QLabel()
        self.write_buttons = (
            self.cancel_button, self.priority_button, self.pause_button, self.resume_button, self.abort_button,
        )  # fmt: skip
        self._may_write = True

        row = QHBoxLayout()
        for widget in (self.cancel_button, self.priority, self.priority_button, self.resubmit_button):
            row.addWidget(widget)
        row.addStretch()
        for widget in (self.pause_button, self.resume_button, self.abort_button):
            row.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(row)
        layout.addWidget(self.message)
        self._update_buttons()

    def refresh(self) -> None:
        asked = time.monotonic()
        self.background.call(self.client.jobs, lambda jobs: self.show_jobs(jobs, asked), self._failed)

    def show_jobs(self, jobs: Sequence[JobInfo], asked: float | None = None) -> None:
        """The job table; a job that changed (live) after the table was asked for keeps its newer state."""
        fresh = {job.id: job for job in jobs}
        if asked is not None:
            for job_id, when in self._updated.items():
                if when > asked and job_id in self.jobs:
                    fresh[job_id] = self.jobs[job_id]
        self.jobs = fresh
        self._redraw()

    def update_job(self, job: JobInfo) -> None:
        """A job's new state from the live stream (or from an action's answer)."""
        self.jobs[job.id] = job
        self._updated[job.id] = time.monotonic()
        self._redraw()

    def _redraw(self) -> None:
        selected = self.selected()
        self.table.setRowCount(0)
        for row, job in enumerate(sorted(self.jobs.values(), key=lambda j: j.id, reverse=True)):
            self.table.insertRow(row)
            cells = (
                str(job.id), job.experiment, job.status, str(job.priority), job.submitter,
                _when(job.submitted), _when(job.started), _when(job.finished), "", job.error or "",
            )  # fmt: skip
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, job.id)
                if column == 2 and job.status in STATUS_COLOURS:
                    item.setForeground(Qt.GlobalColor.white)
                    item.setBackground(QColor(STATUS_COLOURS[job.status]))
                self.table.setItem(row, column, item)
            bar = QProgressBar()
            bar.setRange(0, job.points_total or 1)
            bar.setValue(min(job.points_done, job.points_total or 1) if job.points_total else 0)
            bar.setFormat(f"{job.points_done} / {job.points_total}" if job.points_total else f"{job.points_done}")
            self.table.setCellWidget(row, PROGRESS_COLUMN, bar)
            if selected is not None and job.id == selected.id:
                self.table.selectRow(row)
        self._update_buttons()

    def selected(self) -> JobInfo | None:
        items = self.table.selectedItems()
        if not items:
            return None
        return self.jobs.get(int(items[0].data(Qt.ItemDataRole.UserRole)))

    def select_job(self, job_id: int) -> None:
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item is not None and int(item.data(Qt.ItemDataRole.UserRole)) == job_id:
                self.table.selectRow(row)
                return

    def _update_buttons(self) -> None:
        job = self.selected()
        may = self._may_write
        self.cancel_button.setEnabled(may and job is not None and not job.terminal)
        self.priority_button.setEnabled(may and job is not None and job.status == "queued")
        self.resubmit_button.setEnabled(job is not None and bool(job.request))
        for button in (self.pause_button, self.resume_button, self.abort_button):
            button.setEnabled(may)
        if job is not None:
            self.priority.setValue(job.priority)

    def cancel_selected(self) -> None:
        job = self.selected()
        if job is not None:
            self.background.call(lambda: self.client.cancel(job.id), self.update_job, self._failed)

    def set_priority_selected(self) -> None:
        job = self.selected()
        if job is not None:
            priority = self.priority.value()
            self.background.call(lambda: self.client.set_priority(job.id, priority), self.update_job, self._failed)

    def _resubmit_selected(self) -> None:
        job = self.selected()
        if job is not None:
            for callback in self.on_resubmit:
                callback(job)

    def _control(self, action: Callable[[], None], name: str) -> None:
        self.background.call(action, lambda _r: self.message.setText(f"{name}: done"), self._failed)

    def _failed(self, error: Exception) -> None:
        self.message.setText(f"<font color='#d62728'>{error}</font>")

    def set_may_write(self, may: bool) -> None:
        self._may_write = may
        for button in self.write_buttons:
            button.setToolTip("" if may else "an observer key may not change jobs")
        self._update_buttons()
