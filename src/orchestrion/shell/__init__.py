"""Interactive sessions: the IPython profile's namespace, progress and summaries."""

from ._display import DisplayCheck, ProgressDisplay, SummaryPrinter, check_display, print_run_summary
from ._errors import install_error_handler, one_line
from ._ipython import load_ipython_session
from ._params import ParameterBrowser, ParameterView
from ._session import Problem, ShellSession

__all__ = [
    "DisplayCheck",
    "ParameterBrowser",
    "ParameterView",
    "Problem",
    "ProgressDisplay",
    "ShellSession",
    "SummaryPrinter",
    "check_display",
    "install_error_handler",
    "load_ipython_session",
    "one_line",
    "print_run_summary",
]
