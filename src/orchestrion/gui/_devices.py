"""The devices page: each device's class, role, state and read-back; enable and disable."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._experiments import format_value
from ._protocol import DeviceInfo, StackClient
from ._tasks import Background

COLUMNS = ("Device", "Class", "Role", "Enabled", "Connection", "Read-back")


class DevicesPage(QWidget):
    def __init__(self, client: StackClient, background: Background, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client, self.background = client, background
        self.devices: dict[str, DeviceInfo] = {}
        self._may_write = True
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.enable_button = QPushButton("Enable")
        self.enable_button.clicked.connect(lambda: self._set_enabled(True))
        self.disable_button = QPushButton("Disable")
        self.disable_button.clicked.connect(lambda: self._set_enabled(False))
        self.refresh_button = QPushButton("Read again")
        self.refresh_button.clicked.connect(self.refresh)
        self.message = QLabel()
        row = QHBoxLayout()
        for button in (self.enable_button, self.disable_button, self.refresh_button):
            row.addWidget(button)
        row.addStretch()
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(row)
        layout.addWidget(self.message)
        self._update_buttons()

    def refresh(self) -> None:
        self.background.call(self.client.devices, self.show_devices, self._failed)

    def show_devices(self, devices: Sequence[DeviceInfo]) -> None:
        selected = self.selected()
        self.devices = {d.name: d for d in devices}
        self.table.setRowCount(0)
        for row, device in enumerate(devices):
            self.table.insertRow(row)
            readback = ", ".join(f"{k} = {format_value(v)}" for k, v in device.readback.items())
            cells = (device.name, device.device_class, device.role, "yes" if device.enabled else "no",
                     device.connection, readback)  # fmt: skip
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, device.name)
                if column == 4:
                    item.setForeground(QColor("#2ca02c" if device.connection == "connected" else "#d62728"))
                self.table.setItem(row, column, item)
            if selected is not None and selected.name == device.name:
                self.table.selectRow(row)
        self._update_buttons()

    def selected(self) -> DeviceInfo | None:
        items = self.table.selectedItems()
        return self.devices.get(str(items[0].data(Qt.ItemDataRole.UserRole))) if items else None

    def _update_buttons(self) -> None:
        device = self.selected()
        self.enable_button.setEnabled(self._may_write and device is not None and not device.enabled)
        self.disable_button.setEnabled(self._may_write and device is not None and device.enabled)

    def _set_enabled(self, enabled: bool) -> None:
        device = self.selected()
        if device is not None:
            name = device.name
            self.background.call(
                lambda: self.client.set_device_enabled(name, enabled), lambda _d: self.refresh(), self._failed
            )

    def set_may_write(self, may: bool) -> None:
        self._may_write = may
        for button in (self.enable_button, self.disable_button):
            button.setToolTip("" if may else "an observer key may not change devices")
        self._update_buttons()

    def _failed(self, error: Exception) -> None:
        self.message.setText(f"<font color='#d62728'>{error}</font>")
