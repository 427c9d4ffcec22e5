"""The Qt GUI and the run plots it shares with `orchestrion plot`.

`plot_run` turns a run (`RunData`, from Tiled or the live stream) into what is drawn;
`save_figure` draws it with matplotlib, the GUI's data page with pyqtgraph.  The GUI
(`run_gui`, `MainWindow`) talks to the stack only through a `StackClient`:
`ApiStackClient`, the API server and its Tiled.
"""

from ._api import ApiStackClient
from ._app import run_gui, take_screenshots
from ._catalog import find_run, open_catalog, run_data_from_node, search_catalog
from ._experiments import AxisSetting, EditorSettings
from ._figure import draw_figure, save_figure, show_figure, write_run_figures
from ._plotdata import Axis, Curve, FitCurve, Histogram, Image, RunData, RunPlot, plot_run, point_histogram
from ._protocol import (
    DeviceInfo,
    ExperimentInfo,
    FieldError,
    Forbidden,
    JobInfo,
    LiveEvent,
    ParameterChange,
    ParameterInfo,
    RunSearch,
    RunSummary,
    ServiceHealth,
    StackClient,
    StackStatus,
)
from ._tasks import Background, Mailbox
from ._window import MainWindow

__all__ = [
    "ApiStackClient",
    "Axis",
    "AxisSetting",
    "Background",
    "Curve",
    "DeviceInfo",
    "EditorSettings",
    "ExperimentInfo",
    "FieldError",
    "FitCurve",
    "Forbidden",
    "Histogram",
    "Image",
    "JobInfo",
    "LiveEvent",
    "Mailbox",
    "MainWindow",
    "ParameterChange",
    "ParameterInfo",
    "RunData",
    "RunPlot",
    "RunSearch",
    "RunSummary",
    "ServiceHealth",
    "StackClient",
    "StackStatus",
    "draw_figure",
    "find_run",
    "open_catalog",
    "plot_run",
    "point_histogram",
    "run_data_from_node",
    "run_gui",
    "save_figure",
    "search_catalog",
    "show_figure",
    "take_screenshots",
    "write_run_figures",
]
