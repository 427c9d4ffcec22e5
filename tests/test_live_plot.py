"""The live plot, on a real X server (Xvfb): a shell session draws the scan as it runs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrion.shell._display import check_display

from .shell_session import Session
from .support import xvfb_display


@pytest.fixture(scope="module")
def x_display() -> Iterator[str]:
    """A private Xvfb for this module's sessions."""
    with xvfb_display() as display:
        yield display


def test_the_display_check_finds_qt_on_the_x_server(x_display: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", x_display)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    check = check_display()
    assert check.framework == "qt", check
    assert check.problem is None


def test_a_display_qt_cannot_use_is_a_reported_problem_not_a_crash(
    x_display: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a machine without Qt's X libraries: Qt aborts at the first window.
    monkeypatch.setenv("DISPLAY", x_display)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "no_such_platform")
    check = check_display()
    assert check.framework is None
    assert check.problem is not None
    assert "no_such_platform" in check.problem


def test_no_display_no_plots_no_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    check = check_display()
    assert (check.framework, check.problem) == (None, None)


# Typed into the session after the scan, one line each: what matplotlib shows, written to a file.
FACTS = [
    "import json, matplotlib, numpy as np, matplotlib.pyplot as plt",
    "from qtpy.QtGui import QImage",
    "from qtpy.QtWidgets import QApplication",
    "_figures = {plt.figure(n).get_label(): plt.figure(n) for n in plt.get_fignums()}",
    "_label = next(label for label in _figures if label.endswith(' vs point-spectroscopy_detuning'))",
    "_fig = _figures[_label]",
    "_ax = next(ax for ax in _fig.axes if ax.get_ylabel() == 'sequencer-bright_fraction')",
    # The figure as the scan left it: the canvas's image, and the window's pixels read
    # back from the X server; then a fresh draw of the same figure.
    "_shown = np.asarray(_fig.canvas.buffer_rgba())[..., :3].copy()",
    "_grab = QApplication.primaryScreen().grabWindow(int(_fig.canvas.winId())).toImage()",
    "_grab = _grab.convertToFormat(QImage.Format.Format_RGBA8888)",
    "_screen = np.frombuffer(_grab.constBits(), np.uint8, _grab.sizeInBytes())"
    ".reshape(_grab.height(), _grab.bytesPerLine() // 4, 4)[:, : _grab.width(), :3]",
    "_fig.canvas.draw()",
    "_points = [data for data in _events if 'sequencer-bright_fraction' in data]",
    "_facts = dict("
    " backend=matplotlib.get_backend(),"
    " platform=QApplication.instance().platformName(),"
    " labels=list(_figures),"
    " visible=_fig.canvas.isVisible(),"
    " lines=len(_ax.lines),"
    " x=[float(v) for v in _ax.lines[0].get_xdata()],"
    " y=[float(v) for v in _ax.lines[0].get_ydata()],"
    " run_x=[float(data['point-spectroscopy_detuning']) for data in _points],"
    " run_y=[float(data['sequencer-bright_fraction']) for data in _points],"
    " on_screen=np.array_equal(_screen, _shown),"
    " final=np.array_equal(_shown, np.asarray(_fig.canvas.buffer_rgba())[..., :3]),"
    ")",
]


def test_a_scan_draws_a_live_plot_on_the_display(x_display: str, tmp_path: Path) -> None:
    facts_file = tmp_path / "facts.json"
    session = Session(tmp_path / "home", display=x_display)
    try:
        assert "Not available" not in session.banner, session.banner
        # The scan's own data, from its documents, to compare the plot with.
        session.run(
            "_events = []; _ = RE.subscribe(lambda name, doc: _events.append(doc['data']) if name == 'event' else None)"
        )
        out = session.run('RE(spectroscopy(shots=20, scan=["spectroscopy.detuning=-60e3:60e3:7"]))')
        assert re.search(r"spectroscopy run [0-9a-f]{8}: success, 7 points", out), out
        assert "sequencer-bright_fraction" in out  # the live table is there as well
        for line in [*FACTS, f"open({str(facts_file)!r}, 'w').write(json.dumps(_facts))"]:
            out = session.run(line)
            assert "Error" not in out, f"{line}\n{out}"
    finally:
        session.close()

    facts = json.loads(facts_file.read_text())
    assert facts["backend"] == "qtagg"
    assert facts["platform"] == "xcb"  # a window on the X server, not Qt's offscreen platform
    assert facts["visible"]
    # One figure for the scan (and one per monitor); none for the fit or the sequences streams.
    assert not [label for label in facts["labels"] if label.startswith(("fit-", "sequence-"))], facts["labels"]
    assert facts["lines"] == 1
    assert facts["x"] == [-60e3, -40e3, -20e3, 0.0, 20e3, 40e3, 60e3]
    assert facts["x"] == facts["run_x"]
    assert facts["y"] == facts["run_y"]
    # The X server shows the canvas as the scan left it, and that is the whole figure:
    # a fresh draw after the scan changes no pixel.
    assert facts["on_screen"]
    assert facts["final"]
