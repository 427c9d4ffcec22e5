"""`orchestrion gui`: the application, on screen or rendering its pages to PNG files."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from qtpy.QtWidgets import QApplication

from orchestrion.client import AuthError, local_credentials
from orchestrion.config import OrchestrionConfig
from orchestrion.errors import InputError
from orchestrion.services import api_url

from ._api import ApiStackClient
from ._window import MainWindow

SCREENSHOT_TIMEOUT = 60.0


def connect(config: OrchestrionConfig, url: str | None, api_key: str | None) -> ApiStackClient:
    """The stack at ``url`` with ``api_key``, else the configured or local one (`local_credentials`)."""
    if url and not api_key:
        raise InputError("--url needs --api-key (or ORCHESTRION_API_KEY)")
    if api_key:
        return ApiStackClient(url or config.api_url or api_url(config), api_key)
    try:
        return ApiStackClient(*local_credentials(config))
    except AuthError as exc:
        raise InputError(f"{exc}; or give --url and --api-key") from None


def wait_for(app: QApplication, condition: Callable[[], bool], timeout: float) -> bool:
    """Run the event loop until ``condition`` holds (or ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.01)
    return True


def filled(window: MainWindow) -> bool:
    """Every page has what it asked the stack for."""
    return (
        window.background.busy == 0
        and window.status is not None
        and bool(window.experiments.experiments)
        and bool(window.parameters.parameters)
        and bool(window.devices.devices)
    )


def take_screenshots(window: MainWindow, app: QApplication, directory: Path) -> list[Path]:
    """Fill each page from the stack (a parameter's history, the latest run) and save it."""
    window.start()
    wait_for(app, lambda: filled(window), SCREENSHOT_TIMEOUT)
    if window.parameters.parameters:
        first = (
            "qubit.frequency"
            if "qubit.frequency" in window.parameters.parameters
            else next(iter(window.parameters.parameters))
        )
        window.parameters.select(first)
    jobs = [j for j in window.queue.jobs.values() if j.run_uid]
    if window.data.run is None and jobs:
        window.data.show_run(str(max(jobs, key=lambda j: j.id).run_uid))
    elif window.data.run is None and window.data.results.rowCount():
        window.data.results.selectRow(0)
    if window.queue.jobs:
        latest = window.queue.jobs[max(window.queue.jobs)]
        window.queue.select_job(latest.id)
        window.experiments.select(latest.experiment)
    if window.devices.devices:
        window.devices.table.selectRow(0)
    wait_for(app, lambda: window.background.busy == 0 and window.data.run is not None, SCREENSHOT_TIMEOUT)
    window.data.redraw()
    return window.save_screenshots(directory)


def run_gui(
    config: OrchestrionConfig, *, url: str | None = None, api_key: str | None = None, screenshot: Path | None = None
) -> int:
    """Open the GUI on a stack (or render its pages to ``screenshot`` and return)."""
    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(sys.argv[:1])
    client = connect(config, url, api_key)
    window = MainWindow(client)
    try:
        if screenshot is not None:
            window.resize(1500, 900)
            for path in take_screenshots(window, app, screenshot):
                print(path)
            return 0
        window.show()
        window.start()
        return int(app.exec())
    finally:
        window.shutdown()
        client.close()
