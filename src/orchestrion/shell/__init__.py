"""Interactive sessions: the IPython profile's namespace, progress and summaries."""

from typing import TYPE_CHECKING

from orchestrion._lazy import lazy_exports

if TYPE_CHECKING:
    from ._display import DisplayCheck, ProgressDisplay, SummaryPrinter, check_display, print_run_summary
    from ._errors import install_error_handler, one_line
    from ._ipython import load_ipython_session
    from ._params import ParameterBrowser, ParameterView
    from ._session import Problem, ShellSession

# Imported when first used (`orchestrion._lazy`): a listing command must not pay for the
# stack behind the names it does not use (issue 16).
_EXPORTS = {
    "._display": ("DisplayCheck", "ProgressDisplay", "SummaryPrinter", "check_display", "print_run_summary"),
    "._errors": ("install_error_handler", "one_line"),
    "._ipython": ("load_ipython_session",),
    "._params": ("ParameterBrowser", "ParameterView"),
    "._session": ("Problem", "ShellSession"),
}
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

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
