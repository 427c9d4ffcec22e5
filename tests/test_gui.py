"""The Qt GUI against a real stack (`orchestrion up`: Redis, queue server, Tiled, API server).

Qt draws on a private Xvfb; every wait is on a condition of the widgets (qtbot.waitUntil).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from orchestrion.client import Client, local_credentials
from orchestrion.config import OrchestrionConfig
from orchestrion.gui import ApiStackClient, AxisSetting, MainWindow, take_screenshots
from orchestrion.services import api_url, service, stop_service, up

from .support import running_stack, xvfb_display

pytestmark = pytest.mark.timeout(600)

SHORT = ("spectroscopy.detuning=-1e5:1e5:9",)


@pytest.fixture(scope="session")
def x_display() -> Iterator[str]:
    """A private Xvfb for the session's QApplication (which lives as long as the session)."""
    with xvfb_display() as display:
        yield display


@pytest.fixture(scope="session")
def qapp_args(x_display: str) -> list[str]:
    # A real X server (Qt's xcb platform) rather than offscreen drawing.  pytest-qt makes one
    # QApplication per session: if another module made it first, its platform stands.
    return [sys.argv[0], "-platform", "xcb", "-display", x_display]


@pytest.fixture(autouse=True)
def private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The editor keeps its settings in QSettings: here, not in the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrchestrionConfig]:
    with running_stack(tmp_path_factory.mktemp("gui") / "home") as config:
        yield config


@pytest.fixture(scope="module")
def admin(stack: OrchestrionConfig) -> Iterator[Client]:
    with Client(*local_credentials(stack)) as client:
        yield client


def open_window(qtbot: object, url: str, key: str) -> MainWindow:
    window = MainWindow(ApiStackClient(url, key))
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    window.start()
    try:
        qtbot.waitUntil(  # type: ignore[attr-defined]
            lambda: window.status is not None and bool(window.experiments.experiments), timeout=60_000
        )
    except Exception as exc:
        # What the window was still waiting for; and its threads and connections end here,
        # not in a later test's garbage collection.
        library = f"{len(window.experiments.experiments)} experiments ({window.experiments.message.text()!r})"
        seen = f"status {window.status!r}; library: {library}; services: {window.services_label.text()!r}"
        window.shutdown()
        window.client.close()
        raise AssertionError(f"the window did not load: {seen}") from exc
    return window


@pytest.fixture
def window(qtbot: object, stack: OrchestrionConfig) -> Iterator[MainWindow]:
    opened = open_window(qtbot, *local_credentials(stack))
    yield opened
    opened.shutdown()
    opened.client.close()


def test_a_scan_submitted_from_the_form_runs_to_done_and_its_plot_holds_every_point(
    qtbot: object, window: MainWindow, admin: Client
) -> None:
    page = window.experiments
    page.select("spectroscopy")
    qtbot.waitUntil(lambda: page.current is not None and page.current.name == "spectroscopy")  # type: ignore[attr-defined]
    page.axes.setRowCount(0)
    page.set_axes([AxisSetting("spectroscopy.detuning", "centre", points="9", centre="0", span="200e3")])
    page.shots.setValue(20)
    page.repetitions.setValue(2)
    page.submit_button.click()
    qtbot.waitUntil(lambda: "queued" in page.message.text(), timeout=30_000)  # type: ignore[attr-defined]
    job_id = max(window.queue.jobs)
    qtbot.waitUntil(lambda: window.queue.jobs[job_id].status == "done", timeout=120_000)  # type: ignore[attr-defined]
    record = admin.job_record(job_id)
    assert record["scan"] == ["spectroscopy.detuning=-100000:100000:9"]
    # The data page followed the job; once done it holds every point: the catalogued run
    # (with its fit), or, when the stack's worker could not reach Tiled, the job's live rows.
    data = window.data
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: (
            data.plot is not None
            and data.run is not None
            and (data.run.uid == record["run_uid"] or data.live_job == job_id)
            and data.plot.points == 18
        ),
        timeout=60_000,
    )
    assert data.plot is not None
    assert [c.label for c in data.plot.curves] == ["repetition 1", "repetition 2", "average"]
    assert sum(c.x.size for c in data.plot.curves if not c.averaged) == 18
    drawn = [item for item in data.graph.getPlotItem().listDataItems() if item.name() == "repetition 1"]
    assert drawn
    assert np.asarray(drawn[0].getData()[1]).size == 9


def test_a_running_jobs_shot_histogram_holds_every_shot_of_the_points_received(
    qtbot: object, window: MainWindow, admin: Client
) -> None:
    shots, total = 50, 1000  # about 10 s of points at the stack's time scale: most arrive while it runs
    job = admin.submit("spectroscopy", scan=[f"spectroscopy.detuning=-1e5:1e5:{total}"], shots=shots)
    data = window.data
    qtbot.waitUntil(lambda: data.live_job == job.id and data.run is not None, timeout=60_000)  # type: ignore[attr-defined]
    assert data.run is not None
    # The points come from the live stream (with the run's start, from the bus; from the
    # catalog when the run is not on it), which must bring their shots too.
    first = data.run.points

    def live_histogram_complete() -> bool:
        plot = data.plot
        if plot is None or not plot.histograms or not first + 5 <= plot.points < total:
            return False
        return bool(plot.histograms[0].counts.sum() == plot.points * shots)

    qtbot.waitUntil(live_histogram_complete, timeout=120_000)  # type: ignore[attr-defined]
    assert job.wait(120)["status"] == "done"


def test_a_bad_value_is_marked_at_its_field_and_nothing_is_queued(
    qtbot: object, window: MainWindow, admin: Client
) -> None:
    before = len(admin.jobs())
    page = window.experiments
    page.select("rabi_flop")
    qtbot.waitUntil(lambda: page.current is not None and page.current.name == "rabi_flop")  # type: ignore[attr-defined]
    override = page.field_widget("qubit.amplitude")
    assert override is not None
    override.setText("7")  # type: ignore[attr-defined]
    page.submit_button.click()
    qtbot.waitUntil(lambda: "qubit.amplitude" in page.field_errors, timeout=30_000)  # type: ignore[attr-defined]
    message = page.field_errors["qubit.amplitude"]
    assert "7" in message
    assert "border" in override.styleSheet()
    assert override.toolTip() == message
    assert len(admin.jobs()) == before
    # The editor kept what was typed: back on this experiment, the override is still there.
    page.select("spectroscopy")
    page.select("rabi_flop")
    qtbot.waitUntil(lambda: page.current is not None and page.current.name == "rabi_flop")  # type: ignore[attr-defined]
    again = page.field_widget("qubit.amplitude")
    assert again is not None
    assert again.text() == "7"  # type: ignore[attr-defined]


def test_a_parameter_edited_appears_in_its_history_plot_with_its_source(qtbot: object, window: MainWindow) -> None:
    page = window.parameters
    qtbot.waitUntil(lambda: "qubit.pi_time" in page.parameters, timeout=30_000)  # type: ignore[attr-defined]
    page.select("qubit.pi_time")
    qtbot.waitUntil(lambda: page.current is not None and page.current.id == "qubit.pi_time")  # type: ignore[attr-defined]
    page.value.setText("1.05e-05")
    page.set_button.click()
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: bool(page.history) and page.history[-1].value == pytest.approx(1.05e-05), timeout=30_000
    )
    assert page.history[-1].source.endswith("admin") or page.history[-1].source
    points = [item.getData()[1] for item in page.plot.getPlotItem().listDataItems()]
    assert any(np.any(np.isclose(np.asarray(ys, dtype=float), 1.05e-05)) for ys in points)
    assert page.parameters["qubit.pi_time"].value == pytest.approx(1.05e-05)
    # A refused value is marked at the field, and the stored value stays.
    page.value.setText("-1")
    page.set_button.click()
    qtbot.waitUntil(lambda: bool(page.error), timeout=30_000)  # type: ignore[attr-defined]
    assert "border" in page.value.styleSheet()


def test_a_queued_job_is_cancelled_from_the_queue_page(qtbot: object, window: MainWindow, admin: Client) -> None:
    long = admin.submit("spectroscopy", scan=["spectroscopy.detuning=-1e5:1e5:400"], shots=50)
    waiting = admin.submit("spectroscopy", scan=list(SHORT), shots=5)
    queue = window.queue
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: waiting.id in queue.jobs and queue.jobs[waiting.id].status == "queued", timeout=60_000
    )
    queue.select_job(waiting.id)
    assert queue.cancel_button.isEnabled()
    queue.cancel_button.click()
    qtbot.waitUntil(lambda: queue.jobs[waiting.id].status == "cancelled", timeout=30_000)  # type: ignore[attr-defined]
    assert admin.job_record(waiting.id)["status"] == "cancelled"
    # The running one is aborted from the same page.
    qtbot.waitUntil(lambda: queue.jobs[long.id].status == "running", timeout=60_000)  # type: ignore[attr-defined]
    queue.abort_button.click()
    qtbot.waitUntil(lambda: queue.jobs[long.id].terminal, timeout=60_000)  # type: ignore[attr-defined]


def test_an_observer_sees_everything_and_its_buttons_are_disabled(
    qtbot: object, stack: OrchestrionConfig, admin: Client
) -> None:
    key = str(admin.create_key("observer", "lab-pc")["key"])
    window = open_window(qtbot, api_url(stack), key)
    try:
        assert window.status is not None
        assert window.status.role == "observer"
        qtbot.waitUntil(lambda: bool(window.parameters.parameters), timeout=30_000)  # type: ignore[attr-defined]
        assert not window.experiments.submit_button.isEnabled()
        assert not window.parameters.set_button.isEnabled()
        for button in window.queue.write_buttons:
            assert not button.isEnabled()
        assert not window.devices.enable_button.isEnabled()
        assert not window.devices.disable_button.isEnabled()
        assert "observer" in window.principal_label.text()
    finally:
        window.shutdown()
        window.client.close()


def test_screenshots_of_every_page_filled_from_the_stack(
    qtbot: object, window: MainWindow, tmp_path: Path, qapp: object
) -> None:
    written = take_screenshots(window, qapp, tmp_path)  # type: ignore[arg-type]
    assert [p.name for p in written] == [
        "1-experiments.png", "2-queue.png", "3-data.png", "4-parameters.png", "5-devices.png",
    ]  # fmt: skip
    for path in written:
        pixels = imread(path)
        assert pixels.shape[0] > 500
        # Not a blank page: many distinct colours.
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1])[::97], axis=0)) > 20


def test_the_status_bar_shows_every_service_who_is_connected_and_a_killed_worker(
    qtbot: object, window: MainWindow, stack: OrchestrionConfig
) -> None:
    def shown() -> dict[str, str]:
        status = window.status
        return {s.name: s.health for s in status.services} if status is not None else {}

    qtbot.waitUntil(lambda: "post-processing-2" in shown(), timeout=30_000)  # type: ignore[attr-defined]
    text = window.services_label.text()
    for name in ("API server", "queue server", "Redis", "Tiled", "parameter store", "post-processing-1",
                 "post-processing-2", "scheduler"):  # fmt: skip
        assert name in text, text
    assert set(shown().values()) == {"ok"}, shown()
    # This window's own live stream is a connected client: the admin key's holder.
    qtbot.waitUntil(lambda: "admin (admin)" in window.principal_label.text(), timeout=30_000)  # type: ignore[attr-defined]

    # The keeper would restart the worker at once: stopped first, so the dead worker is seen.
    stop_service(stack, "keeper")
    worker = service("post-processing-2", stack)
    pid = worker.pid(stack)
    assert pid is not None
    try:
        os.kill(pid, signal.SIGKILL)
        # The slow poll (every few seconds, off the GUI thread) brings it.
        qtbot.waitUntil(lambda: shown().get("post-processing-2") in ("down", "unhealthy"), timeout=60_000)  # type: ignore[attr-defined]
        assert "post-processing-2 down" in window.services_label.text() or "unhealthy" in window.services_label.text()
        assert shown()["post-processing-1"] == "ok"
    finally:
        up(stack)
    qtbot.waitUntil(lambda: set(shown().values()) == {"ok"}, timeout=60_000)  # type: ignore[attr-defined]


def test_a_device_is_disabled_and_enabled_from_the_devices_page(
    qtbot: object, window: MainWindow, admin: Client
) -> None:
    page = window.devices
    qtbot.waitUntil(lambda: "rf" in page.devices, timeout=30_000)  # type: ignore[attr-defined]
    row = list(page.devices).index("rf")  # the table lists them in this order
    page.table.selectRow(row)
    assert page.disable_button.isEnabled()
    page.disable_button.click()
    qtbot.waitUntil(lambda: not page.devices["rf"].enabled, timeout=30_000)  # type: ignore[attr-defined]
    assert next(d for d in admin.devices() if d["name"] == "rf")["enabled"] is False
    assert admin.device_history("rf")[-1]["user"] == "admin"
    page.table.selectRow(row)
    qtbot.waitUntil(page.enable_button.isEnabled, timeout=10_000)  # type: ignore[attr-defined]
    page.enable_button.click()
    qtbot.waitUntil(lambda: page.devices["rf"].enabled, timeout=30_000)  # type: ignore[attr-defined]
    assert next(d for d in admin.devices() if d["name"] == "rf")["enabled"] is True


def test_a_library_the_api_server_could_not_give_is_asked_for_again_until_it_can(
    qtbot: object, stack: OrchestrionConfig
) -> None:
    url, key = local_credentials(stack)
    stop_service(stack, "api")  # as a window opened while the stack starts finds it
    window = MainWindow(ApiStackClient(url, key))
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    try:
        window.start()
        page = window.experiments
        qtbot.waitUntil(lambda: "asking again" in page.message.text(), timeout=30_000)  # type: ignore[attr-defined]
        assert page.experiments == {}
        up(stack)
        qtbot.waitUntil(lambda: "spectroscopy" in page.experiments, timeout=60_000)  # type: ignore[attr-defined]
        assert page.message.text() == ""
    finally:
        up(stack)
        window.shutdown()
        window.client.close()
