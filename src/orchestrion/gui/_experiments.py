"""The experiments page: the library, a parameter form, a scan editor, submission.

What is asked is checked by the server (the same validation as `orchestrion submit`);
a refusal is marked at the field it names, and nothing is queued.  The editor keeps
each experiment's last settings, in this session and across sessions (QSettings).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from qtpy.QtCore import QSettings, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._protocol import ExperimentInfo, FieldError, JobInfo, ParameterInfo, StackClient
from ._tasks import Background

logger = logging.getLogger(__name__)

MODES = ("range", "list", "centre")
"""Scan axis modes: start/stop/points, a list of values, or a span of points around a centre."""
PATTERNS = ("linear", "shuffled", "centred")
ERROR_STYLE = "border: 2px solid #d62728; background: #fde8e8;"
SETTINGS_GROUP = "experiment-editor"
LIBRARY_RETRY_MS = 5_000  # after the library could not be read


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def bounds_text(parameter: ParameterInfo) -> str:
    if parameter.allowed:
        return " | ".join(format_value(v) for v in parameter.allowed)
    low, high = parameter.minimum, parameter.maximum
    if low is None and high is None:
        return ""
    return f"[{format_value(low) if low is not None else '-inf'}, {format_value(high) if high is not None else 'inf'}]"


@dataclass
class AxisSetting:
    """One row of the scan editor."""

    id: str
    mode: str = "range"
    start: str = ""
    stop: str = ""
    points: str = "11"
    values: str = ""
    centre: str = ""
    span: str = ""


@dataclass
class EditorSettings:
    """Everything the editor holds for one experiment."""

    overrides: dict[str, str] = field(default_factory=dict)
    axes: list[AxisSetting] = field(default_factory=list)
    pattern: str = "linear"
    repetitions: int = 1
    shots: int = 100
    priority: int = 0

    @classmethod
    def default_for(cls, experiment: ExperimentInfo) -> EditorSettings:
        axes = []
        for scan in experiment.default_scans:
            values = scan.values
            if len(values) >= 2 and _evenly_spaced(values):
                axes.append(
                    AxisSetting(scan.id, "range", format_value(values[0]), format_value(values[-1]), str(len(values)))
                )
            else:
                axes.append(AxisSetting(scan.id, "list", values=",".join(format_value(v) for v in values)))
        return cls(axes=axes, shots=experiment.default_shots)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EditorSettings:
        data = json.loads(text)
        data["axes"] = [AxisSetting(**a) for a in data.get("axes", [])]
        return cls(**data)

    @classmethod
    def from_request(cls, request: Mapping[str, Any], priority: int, shots: int) -> EditorSettings:
        """A finished job's request, as the editor shows it (for resubmission)."""
        axes = []
        for text in request.get("scan") or ():
            axis_id, _, spec = str(text).partition("=")
            parts = spec.split(":")
            if len(parts) == 3:
                axes.append(AxisSetting(axis_id, "range", parts[0], parts[1], parts[2]))
            else:
                axes.append(AxisSetting(axis_id, "list", values=spec))
        return cls(
            overrides={k: format_value(v) for k, v in (request.get("parameters") or {}).items()},
            axes=axes,
            pattern=str(request.get("pattern") or "linear"),
            repetitions=int(request.get("repetitions") or 1),
            shots=int(request.get("shots") or shots),
            priority=priority,
        )


def _evenly_spaced(values: Sequence[float]) -> bool:
    step = (values[-1] - values[0]) / (len(values) - 1)
    return all(abs(values[0] + i * step - v) <= 1e-9 * max(1.0, abs(v)) for i, v in enumerate(values))


class _LocalError(Exception):
    """An entry the editor can tell is wrong before asking the server (not a number)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _number(text: str, field: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _LocalError(field, f"{what}: '{text}' is not a number") from None


class ExperimentsPage(QWidget):
    """Pick an experiment, set its run, submit it."""

    def __init__(self, client: StackClient, background: Background, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client, self.background = client, background
        self.experiments: dict[str, ExperimentInfo] = {}
        self.current: ExperimentInfo | None = None
        self.settings: dict[str, EditorSettings] = {}
        self.field_errors: dict[str, str] = {}
        """Field -> the message marked at it (parameter id, "scan[N]", "shots", ...)."""
        self.on_submitted: list[Callable[[JobInfo], None]] = []
        """Called with each job this page queued."""
        self._store = QSettings("Orchestrion", "gui")
        self._may_write = True

        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Experiment", "Description"])
        self.tree.itemSelectionChanged.connect(self._selected)

        self.title = QLabel()
        self.title.setWordWrap(True)
        self.parameters = QTableWidget(0, 5)
        self.parameters.setHorizontalHeaderLabels(["Parameter", "Stored", "Unit", "Bounds / allowed", "Override"])
        self.parameters.verticalHeader().setVisible(False)
        self.parameters.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.parameters.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.parameters.horizontalHeader().setStretchLastSection(True)
        self._override_widgets: dict[str, QLineEdit | QComboBox] = {}

        self.axes = QTableWidget(0, 8)
        self.axes.setHorizontalHeaderLabels(["Axis", "Mode", "Start", "Stop", "Points", "Values", "Centre", "Span"])
        self.axes.verticalHeader().setVisible(False)
        self.axes.horizontalHeader().setStretchLastSection(True)
        self.add_axis = QPushButton("Add axis")
        self.add_axis.clicked.connect(lambda: self._add_axis_row(AxisSetting(self._axis_choices()[0])))
        self.remove_axis = QPushButton("Remove axis")
        self.remove_axis.clicked.connect(self._remove_axis_row)

        self.pattern = QComboBox()
        self.pattern.addItems(PATTERNS)
        self.repetitions = QSpinBox()
        self.repetitions.setRange(1, 10_000)
        self.shots = QSpinBox()
        self.shots.setRange(1, 100_000)
        self.priority = QSpinBox()
        self.priority.setRange(-1000, 1000)
        self.submit_button = QPushButton("Submit")
        self.submit_button.clicked.connect(self.submit)
        self.message = QLabel()
        self.library_retry = QTimer(self)
        self.library_retry.setSingleShot(True)
        self.library_retry.setInterval(LIBRARY_RETRY_MS)
        self.library_retry.timeout.connect(self.refresh)
        self.library_unread = False  # the message says the library could not be read
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        scan_box = QGroupBox("Scan")
        scan_layout = QVBoxLayout(scan_box)
        scan_layout.addWidget(self.axes)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_axis)
        buttons.addWidget(self.remove_axis)
        buttons.addStretch()
        scan_layout.addLayout(buttons)
        run_form = QFormLayout()
        run_form.addRow("Pattern", self.pattern)
        run_form.addRow("Repetitions", self.repetitions)
        run_form.addRow("Shots", self.shots)
        run_form.addRow("Priority", self.priority)
        scan_layout.addLayout(run_form)
        submit_row = QHBoxLayout()
        submit_row.addWidget(self.submit_button)
        submit_row.addWidget(self.message, 1)
        scan_layout.addLayout(submit_row)

        editor = QWidget()
        editor_layout = QVBoxLayout(editor)
        editor_layout.addWidget(self.title)
        editor_layout.addWidget(self.parameters, 3)
        editor_layout.addWidget(scan_box, 2)

        splitter = QSplitter()
        splitter.addWidget(self.tree)
        splitter.addWidget(editor)
        splitter.setStretchFactor(1, 3)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    # -- loading ------------------------------------------------------------------------

    def refresh(self) -> None:
        self.background.call(self.client.experiments, self.show_experiments, self._library_failed)

    def _library_failed(self, error: Exception) -> None:
        """The library could not be read (an API server still starting, a plan that does not
        import): said on the page, and asked again until it can be."""
        self.message.setText(f"<font color='#d62728'>cannot read the library: {error} "
                             f"(asking again in {LIBRARY_RETRY_MS // 1000} s)</font>")  # fmt: skip
        self.library_unread = True
        self.library_retry.start()

    def show_experiments(self, experiments: Sequence[ExperimentInfo]) -> None:
        if self.library_unread:
            self.library_unread = False
            self.message.clear()
        chosen = self.current.name if self.current else None
        self.experiments = {e.name: e for e in experiments}
        self.tree.clear()
        groups: dict[str, QTreeWidgetItem] = {}
        for experiment in experiments:
            group = groups.get(experiment.display_group)
            if group is None:
                group = QTreeWidgetItem(self.tree, [experiment.display_group])
                group.setFlags(group.flags() & ~Qt.ItemFlag.ItemIsSelectable)
                groups[experiment.display_group] = group
            item = QTreeWidgetItem(group, [experiment.name, experiment.description])
            item.setData(0, Qt.ItemDataRole.UserRole, experiment.name)
        self.tree.expandAll()
        self.tree.resizeColumnToContents(0)
        if experiments:
            self.select(chosen if chosen in self.experiments else experiments[0].name)

    def select(self, name: str) -> None:
        for group in range(self.tree.topLevelItemCount()):
            top = self.tree.topLevelItem(group)
            children = [top.child(i) for i in range(top.childCount())] if top is not None else []
            for child in children:
                if child is not None and child.data(0, Qt.ItemDataRole.UserRole) == name:
                    self.tree.setCurrentItem(child)
                    return

    def _selected(self) -> None:
        items = self.tree.selectedItems()
        name = items[0].data(0, Qt.ItemDataRole.UserRole) if items else None
        if not name or name not in self.experiments:
            return
        if self.current is not None:
            self._remember()
        self.current = self.experiments[name]
        self._show(self.current, self._settings_for(self.current))

    def _settings_for(self, experiment: ExperimentInfo) -> EditorSettings:
        if experiment.name not in self.settings:
            stored = self._store.value(f"{SETTINGS_GROUP}/{experiment.name}")
            try:
                self.settings[experiment.name] = (
                    EditorSettings.from_json(str(stored)) if stored else EditorSettings.default_for(experiment)
                )
            except (ValueError, TypeError, KeyError):
                self.settings[experiment.name] = EditorSettings.default_for(experiment)
        return self.settings[experiment.name]

    def _show(self, experiment: ExperimentInfo, settings: EditorSettings) -> None:
        self.clear_errors()
        self.title.setText(f"<b>{experiment.name}</b>: {experiment.description}")
        self.parameters.setRowCount(0)
        self._override_widgets.clear()
        for row, parameter in enumerate(experiment.parameters):
            self.parameters.insertRow(row)
            for column, text in enumerate(
                (parameter.id, format_value(parameter.value), parameter.unit, bounds_text(parameter))
            ):
                self.parameters.setCellWidget(row, column, QLabel(text))
            self.parameters.cellWidget(row, 0).setToolTip(parameter.description)
            editor: QLineEdit | QComboBox
            if parameter.allowed or parameter.type == "bool":
                editor = QComboBox()
                choices = parameter.allowed if parameter.allowed else (True, False)
                editor.addItems(["", *(format_value(v) for v in choices)])
                editor.setCurrentText(settings.overrides.get(parameter.id, ""))
            else:
                editor = QLineEdit(settings.overrides.get(parameter.id, ""))
                editor.setPlaceholderText("stored value")
            self._override_widgets[parameter.id] = editor
            self.parameters.setCellWidget(row, 4, editor)
        self.axes.setRowCount(0)
        for axis in settings.axes:
            self._add_axis_row(axis)
        self.pattern.setCurrentText(settings.pattern)
        self.repetitions.setValue(settings.repetitions)
        self.shots.setValue(settings.shots)
        self.priority.setValue(settings.priority)

    def load_settings(self, experiment: str, settings: EditorSettings) -> None:
        """Fill the editor with ``settings`` (a resubmission) for ``experiment``."""
        self.settings[experiment] = settings
        if self.current is not None and self.current.name == experiment:
            self._show(self.current, settings)
        else:
            # Selecting saves the editor's current contents first: set them afterwards.
            self.current = None
            self.select(experiment)

    # -- the scan editor ----------------------------------------------------------------

    def _axis_choices(self) -> list[str]:
        if self.current is None:
            return [""]
        numeric = [p.id for p in self.current.parameters if p.type in {"float", "int"}]
        return numeric + list(self.current.device_axes) or [""]

    def _add_axis_row(self, axis: AxisSetting) -> None:
        row = self.axes.rowCount()
        self.axes.insertRow(row)
        choice = QComboBox()
        choice.setEditable(True)
        choice.addItems(self._axis_choices())
        choice.setCurrentText(axis.id)
        mode = QComboBox()
        mode.addItems(MODES)
        mode.setCurrentText(axis.mode)
        self.axes.setCellWidget(row, 0, choice)
        self.axes.setCellWidget(row, 1, mode)
        for column, text in enumerate((axis.start, axis.stop, axis.points, axis.values, axis.centre, axis.span), 2):
            edit = QLineEdit(text)
            if column == 6:
                edit.setPlaceholderText("stored value")
            self.axes.setCellWidget(row, column, edit)
        mode.currentTextChanged.connect(lambda _text, r=row: self._mode_changed(r))
        self._mode_changed(row)

    def set_axes(self, axes: Sequence[AxisSetting]) -> None:
        """Replace the scan editor's rows."""
        self.axes.setRowCount(0)
        for axis in axes:
            self._add_axis_row(axis)

    def _mode_changed(self, row: int) -> None:
        mode = self._cell_text(row, 1)
        enabled = {"range": {2, 3, 4}, "list": {5}, "centre": {4, 6, 7}}[mode]
        for column in range(2, 8):
            self.axes.cellWidget(row, column).setEnabled(column in enabled)

    def _remove_axis_row(self) -> None:
        row = self.axes.currentRow() if self.axes.currentRow() >= 0 else self.axes.rowCount() - 1
        if row >= 0:
            self.axes.removeRow(row)

    def _cell_text(self, row: int, column: int) -> str:
        widget = self.axes.cellWidget(row, column)
        if isinstance(widget, QComboBox):
            return str(widget.currentText()).strip()
        return str(widget.text()).strip() if isinstance(widget, QLineEdit) else ""

    def axis_settings(self) -> list[AxisSetting]:
        return [
            AxisSetting(*(self._cell_text(row, column) for column in range(8)))
            for row in range(self.axes.rowCount())
        ]  # fmt: skip

    def editor_settings(self) -> EditorSettings:
        overrides = {}
        for parameter_id, widget in self._override_widgets.items():
            text = widget.currentText() if isinstance(widget, QComboBox) else widget.text()
            if str(text).strip():
                overrides[parameter_id] = str(text).strip()
        return EditorSettings(
            overrides=overrides,
            axes=self.axis_settings(),
            pattern=self.pattern.currentText(),
            repetitions=self.repetitions.value(),
            shots=self.shots.value(),
            priority=self.priority.value(),
        )

    def _remember(self) -> None:
        if self.current is None:
            return
        settings = self.editor_settings()
        self.settings[self.current.name] = settings
        self._store.setValue(f"{SETTINGS_GROUP}/{self.current.name}", settings.to_json())

    # -- the request --------------------------------------------------------------------

    def _scan_text(self, index: int, axis: AxisSetting) -> str:
        where = f"scan[{index}]"
        if not axis.id:
            raise _LocalError(where, "choose the axis to scan")
        if axis.mode == "list":
            values = [v for v in axis.values.replace(";", ",").split(",") if v.strip()]
            if not values:
                raise _LocalError(where, f"{axis.id}: give the values to scan, separated by commas")
            return f"{axis.id}={','.join(format_value(_number(v.strip(), where, axis.id)) for v in values)}"
        points = axis.points
        if axis.mode == "centre":
            stored = self._stored(axis.id)
            centre = _number(axis.centre, where, f"{axis.id} centre") if axis.centre else stored
            if centre is None:
                raise _LocalError(where, f"{axis.id}: no stored value to centre on; give the centre")
            span = _number(axis.span, where, f"{axis.id} span")
            return f"{axis.id}={format_value(centre - span / 2)}:{format_value(centre + span / 2)}:{points}"
        start = _number(axis.start, where, f"{axis.id} start")
        stop = _number(axis.stop, where, f"{axis.id} stop")
        return f"{axis.id}={format_value(start)}:{format_value(stop)}:{points}"

    def _stored(self, parameter_id: str) -> float | None:
        if self.current is not None:
            for parameter in self.current.parameters:
                if parameter.id == parameter_id and isinstance(parameter.value, int | float):
                    return float(parameter.value)
        return None

    def request(self) -> dict[str, Any]:
        """The run request the editor holds (`RunRequest` fields)."""
        if self.current is None:
            raise _LocalError("experiment", "choose an experiment")
        settings = self.editor_settings()
        scan = [self._scan_text(i, axis) for i, axis in enumerate(settings.axes)]
        return {
            "experiment": self.current.name,
            "scan": scan or None,
            "parameters": dict(settings.overrides),
            "shots": settings.shots,
            "repetitions": settings.repetitions,
            "pattern": settings.pattern,
        }

    def submit(self) -> None:
        self.clear_errors()
        try:
            request = self.request()
        except _LocalError as exc:
            self.mark(exc.field, str(exc))
            return
        self._remember()
        self.submit_button.setEnabled(False)
        self.message.setText("submitting ...")
        priority = self.priority.value()
        self.background.call(lambda: self.client.submit(request, priority=priority), self._submitted, self._refused)

    def _submitted(self, job: JobInfo | None) -> None:
        self.submit_button.setEnabled(self._may_write)
        if job is not None:
            self.message.setText(f"job {job.id} queued ({job.experiment}, priority {job.priority})")
            for callback in self.on_submitted:
                callback(job)

    def _refused(self, error: Exception) -> None:
        self.submit_button.setEnabled(self._may_write)
        if isinstance(error, FieldError):
            self.mark(self._field_for(error.field), error.message)
        else:
            self.message.setText(f"<font color='#d62728'>{error}</font>")

    def _field_for(self, name: str) -> str:
        """The editor's field for a server's field: a scanned parameter is its scan row."""
        for index, axis in enumerate(self.axis_settings()):
            if axis.id == name or (name == "scan" and index == 0):
                return f"scan[{index}]"
        return name

    # -- marks --------------------------------------------------------------------------

    def field_widget(self, name: str) -> QWidget | None:
        if name in self._override_widgets:
            return self._override_widgets[name]
        if name.startswith("scan[") and name.endswith("]"):
            row = int(name[5:-1])
            return self.axes.cellWidget(row, 0) if row < self.axes.rowCount() else None
        return {
            "shots": self.shots,
            "repetitions": self.repetitions,
            "pattern": self.pattern,
            "priority": self.priority,
            "experiment": self.tree,
        }.get(name)

    def mark(self, name: str, message: str) -> None:
        """Show ``message`` at the field ``name`` (and in the message line)."""
        self.field_errors[name] = message
        widget = self.field_widget(name)
        if widget is not None:
            widget.setStyleSheet(ERROR_STYLE)
            widget.setToolTip(message)
            if name.startswith("scan["):
                for column in range(1, 8):
                    self.axes.cellWidget(int(name[5:-1]), column).setStyleSheet(ERROR_STYLE)
        self.message.setText(f"<font color='#d62728'>{name}: {message}</font>" if name else message)

    def clear_errors(self) -> None:
        for name in list(self.field_errors):
            widget = self.field_widget(name)
            if widget is not None:
                widget.setStyleSheet("")
                widget.setToolTip("")
            if name.startswith("scan[") and int(name[5:-1]) < self.axes.rowCount():
                for column in range(1, 8):
                    self.axes.cellWidget(int(name[5:-1]), column).setStyleSheet("")
        self.field_errors.clear()
        self.message.setText("")

    def set_may_write(self, may: bool) -> None:
        self._may_write = may
        self.submit_button.setEnabled(may)
        self.submit_button.setToolTip("" if may else "an observer key may not submit")
