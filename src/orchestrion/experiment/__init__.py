"""Experiments: declarations, scans, pre-processing and the plan that runs them."""

from typing import TYPE_CHECKING

from orchestrion._lazy import lazy_exports

if TYPE_CHECKING:
    from ._ahead import AheadPreparer, NextRun
    from ._context import LabContext, RunStarts, activate, activate_starts, active_lab, active_starts
    from ._experiment import Analyze, BuildSequence, Experiment, ExperimentResult
    from ._library import ExperimentLibrary, LibraryEntry, LibraryError
    from ._plan import experiment_plan, plan_request
    from ._preprocess import SWITCH_INTERVAL, Preprocessor
    from ._request import RunRequest, first_error
    from ._runner import (
        PreparedRun,
        RunEstimate,
        RunLimits,
        RunStart,
        data_key_suffix,
        flatten_ids,
        nest_by_id,
        prepare_run,
        read_parameters,
        run_experiment,
        set_with_readback,
        start_run,
    )
    from ._scan import Linspace, Scan, ScanAxis, ScanPattern, ScanPoint

# Imported when first used (`orchestrion._lazy`): a listing command must not pay for the
# stack behind the names it does not use (issue 16).
_EXPORTS = {
    "._ahead": ("AheadPreparer", "NextRun"),
    "._context": ("LabContext", "RunStarts", "activate", "activate_starts", "active_lab", "active_starts"),
    "._experiment": ("Analyze", "BuildSequence", "Experiment", "ExperimentResult"),
    "._library": ("ExperimentLibrary", "LibraryEntry", "LibraryError"),
    "._plan": ("experiment_plan", "plan_request"),
    "._preprocess": ("SWITCH_INTERVAL", "Preprocessor"),
    "._request": ("RunRequest", "first_error"),
    "._runner": (
        "PreparedRun",
        "RunEstimate",
        "RunLimits",
        "RunStart",
        "data_key_suffix",
        "flatten_ids",
        "nest_by_id",
        "prepare_run",
        "read_parameters",
        "run_experiment",
        "set_with_readback",
        "start_run",
    ),
    "._scan": ("Linspace", "Scan", "ScanAxis", "ScanPattern", "ScanPoint"),
}
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "SWITCH_INTERVAL",
    "AheadPreparer",
    "Analyze",
    "BuildSequence",
    "Experiment",
    "ExperimentLibrary",
    "ExperimentResult",
    "LabContext",
    "LibraryEntry",
    "LibraryError",
    "Linspace",
    "NextRun",
    "PreparedRun",
    "Preprocessor",
    "RunEstimate",
    "RunLimits",
    "RunRequest",
    "RunStart",
    "RunStarts",
    "Scan",
    "ScanAxis",
    "ScanPattern",
    "ScanPoint",
    "activate",
    "activate_starts",
    "active_lab",
    "active_starts",
    "data_key_suffix",
    "experiment_plan",
    "first_error",
    "flatten_ids",
    "nest_by_id",
    "plan_request",
    "prepare_run",
    "read_parameters",
    "run_experiment",
    "set_with_readback",
    "start_run",
]
