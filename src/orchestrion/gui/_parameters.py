"""The parameters page: a tree by namespace and display group, editing, and history.

A parameter's history is drawn as a time series, each change marked and labelled with
its source (the calibration run or the person who set it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pyqtgraph as pg
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._experiments import ERROR_STYLE, bounds_text, format_value
from ._protocol import FieldError, ParameterChange, ParameterInfo, StackClient
from ._tasks import Background

SOURCE_COLOURS = {"default": "#7f7f7f"}
PERSON_COLOUR, RUN_COLOUR = "#1f77b4", "#d62728"


def source_colour(source: str) -> str:
    """Defaults grey, runs (a calibration: the source is a run uid) red, people blue."""
    if source in SOURCE_COLOURS:
        return SOURCE_COLOURS[source]
    return RUN_COLOUR if _looks_like_run(source) else PERSON_COLOUR


_RUN_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _looks_like_run(source: str) -> bool:
    """A calibration records the run it came from ("calibrate_frequency run UID")."""
    return _RUN_UID.search(source) is not None


class ParametersPage(QWidget):
    """Every stored parameter; set one (validated by the server); see how it changed."""

    def __init__(self, client: StackClient, background: Background, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client, self.background = client, background
        self.parameters: dict[str, ParameterInfo] = {}
        self.current: ParameterInfo | None = None
        self.history: list[ParameterChange] = []
        self.error: str = ""
        self._asked = 0

        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Parameter", "Value", "Unit", "Bounds / allowed", "Source", "Changed"])
        self.tree.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemSelectionChanged.connect(self._selected)

        self.title = QLabel("choose a parameter")
        self.title.setWordWrap(True)
        self.value = QLineEdit()
        self.set_button = QPushButton("Set")
        self.set_button.clicked.connect(self.set_value)
        self.value.returnPressed.connect(self.set_value)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.plot = pg.PlotWidget(background="w", axisItems={"bottom": pg.DateAxisItem()})
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.changes = QTableWidget(0, 3)
        self.changes.setHorizontalHeaderLabels(["Time", "Value", "Source"])
        self.changes.verticalHeader().setVisible(False)
        self.changes.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.changes.horizontalHeader().setStretchLastSection(True)

        edit_row = QHBoxLayout()
        edit_row.addWidget(QLabel("New value"))
        edit_row.addWidget(self.value, 1)
        edit_row.addWidget(self.set_button)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.title)
        right_layout.addLayout(edit_row)
        right_layout.addWidget(self.message)
        right_layout.addWidget(self.plot, 2)
        right_layout.addWidget(self.changes, 1)
        splitter = QSplitter()
        splitter.addWidget(self.tree)
        splitter.addWidget(right)
        splitter.setSizes([560, 840])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    def refresh(self) -> None:
        # Answers can come back out of order: only the latest question's answer is shown,
        # so a listing asked for before a write cannot undo what the write showed.
        self._asked += 1
        asked = self._asked
        self.background.call(
            self.client.parameters, lambda found: self.show_parameters(found) if asked == self._asked else None,
            self._failed,
        )  # fmt: skip

    def show_parameters(self, parameters: Sequence[ParameterInfo]) -> None:
        chosen = self.current.id if self.current else None
        self.parameters = {p.id: p for p in parameters}
        self.tree.clear()
        namespaces: dict[str, QTreeWidgetItem] = {}
        groups: dict[tuple[str, str], QTreeWidgetItem] = {}
        for parameter in sorted(parameters, key=lambda p: (p.namespace, p.group, p.id)):
            top = namespaces.get(parameter.namespace)
            if top is None:
                top = namespaces[parameter.namespace] = QTreeWidgetItem(self.tree, [parameter.namespace])
            parent = top
            if parameter.group:
                parent = groups.get((parameter.namespace, parameter.group)) or QTreeWidgetItem(top, [parameter.group])
                groups[(parameter.namespace, parameter.group)] = parent
            stamp = parameter.timestamp.astimezone().strftime("%Y-%m-%d %H:%M:%S") if parameter.timestamp else ""
            item = QTreeWidgetItem(
                parent,
                [
                    parameter.id, format_value(parameter.value), parameter.unit, bounds_text(parameter),
                    parameter.source, stamp,
                ],
            )  # fmt: skip
            item.setToolTip(0, parameter.description)
            item.setData(0, Qt.ItemDataRole.UserRole, parameter.id)
        self.tree.expandAll()
        if chosen:
            self.select(chosen)

    def select(self, parameter_id: str) -> None:
        iterator = [self.tree.topLevelItem(i) for i in range(self.tree.topLevelItemCount())]
        while iterator:
            item = iterator.pop()
            if item is None:
                continue
            if item.data(0, Qt.ItemDataRole.UserRole) == parameter_id:
                self.tree.setCurrentItem(item)
                return
            iterator.extend(item.child(i) for i in range(item.childCount()))

    def _selected(self) -> None:
        items = self.tree.selectedItems()
        parameter_id = items[0].data(0, Qt.ItemDataRole.UserRole) if items else None
        if not parameter_id or parameter_id not in self.parameters:
            return
        changed = self.current is None or self.current.id != parameter_id
        self.current = self.parameters[parameter_id]
        text = f"<b>{self.current.id}</b> = {format_value(self.current.value)} {self.current.unit}"
        if self.current.description:
            text += f"<br>{self.current.description}"
        self.title.setText(text)
        if changed:
            self.value.setText(format_value(self.current.value))
            self._clear_error()
        self.load_history(parameter_id)

    def load_history(self, parameter_id: str) -> None:
        self.background.call(lambda: self.client.history(parameter_id), self._show_history, self._failed)

    def _show_history(self, history: Sequence[ParameterChange]) -> None:
        self.history = sorted(history, key=lambda c: c.timestamp)
        self.plot.clear()
        self.changes.setRowCount(0)
        numeric = [c for c in self.history if _numeric(c.value)]
        if self.current is not None:
            unit = f" ({self.current.unit})" if self.current.unit else ""
            self.plot.setLabel("left", f"{self.current.id}{unit}")
            self.plot.setTitle(f"history of {self.current.id}: {len(self.history)} changes", size="9pt")
        if numeric:
            xs = [c.timestamp.timestamp() for c in numeric]
            ys = [float(c.value) for c in numeric]
            # The value holds until the next change: a step line, extended to now.
            self.plot.plot(
                [*xs, max(xs[-1], time.time())], [*ys, ys[-1]], stepMode="left", pen=pg.mkPen("#444", width=1.5)
            )
            self.plot.plot(
                xs, ys, pen=None, symbol="o", symbolSize=9, symbolPen=None,
                symbolBrush=[pg.mkBrush(source_colour(c.source)) for c in numeric],
            )  # fmt: skip
            for change in numeric:
                label = pg.TextItem(_short(change.source), color=source_colour(change.source), anchor=(0, 1))
                label.setPos(change.timestamp.timestamp(), float(change.value))
                self.plot.addItem(label)
        for row, change in enumerate(reversed(self.history)):
            self.changes.insertRow(row)
            cells = (change.timestamp.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                     format_value(change.value), change.source)  # fmt: skip
            for column, text in enumerate(cells):
                self.changes.setItem(row, column, QTableWidgetItem(text))

    def set_value(self) -> None:
        if self.current is None:
            return
        self._clear_error()
        parameter_id, text = self.current.id, self.value.text().strip()
        value = _typed(text, self.current)
        self.set_button.setEnabled(False)
        self.background.call(lambda: self.client.set_parameter(parameter_id, value), self._stored, self._refused)

    def _stored(self, parameter: ParameterInfo) -> None:
        self.set_button.setEnabled(True)
        # The write's answer is the stored value: shown as it is, with the declaration
        # the page already has (the answer carries value, time and source only).
        known = self.parameters.get(parameter.id)
        if known is not None:
            parameter = replace(known, value=parameter.value, timestamp=parameter.timestamp, source=parameter.source)
        self.parameters[parameter.id] = parameter
        self.message.setText(f"{parameter.id} = {format_value(parameter.value)} {parameter.unit} stored")
        self._asked += 1  # a listing asked for before this write is older than it
        self.show_parameters(list(self.parameters.values()))

    def _refused(self, error: Exception) -> None:
        self.set_button.setEnabled(True)
        self.error = error.message if isinstance(error, FieldError) else str(error)
        self.value.setStyleSheet(ERROR_STYLE)
        self.value.setToolTip(self.error)
        self.message.setText(f"<font color='#d62728'>{self.error}</font>")

    def _clear_error(self) -> None:
        self.error = ""
        self.value.setStyleSheet("")
        self.value.setToolTip("")
        self.message.setText("")

    def set_may_write(self, may: bool) -> None:
        self.set_button.setEnabled(may)
        self.value.setReadOnly(not may)
        self.set_button.setToolTip("" if may else "an observer key may not set parameters")

    def _failed(self, error: Exception) -> None:
        self.message.setText(f"<font color='#d62728'>{error}</font>")


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(source: str) -> str:
    """A source as a plot label: a run uid cut to its first 8 characters."""
    return _RUN_UID.sub(lambda uid: uid.group(0)[:8], source)


def _typed(text: str, parameter: ParameterInfo) -> Any:
    """The text as the parameter's type when it reads as one; the server checks the rest."""
    if parameter.type in {"float", "int"}:
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if parameter.type == "int" and number.is_integer() else number
    if parameter.type == "bool":
        return {"true": True, "false": False}.get(text.lower(), text)
    return text
