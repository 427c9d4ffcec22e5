"""Experiments: declarations, scans, pre-processing and the plan that runs them."""

from ._ahead import AheadPreparer, NextRun
from ._context import LabContext, RunStarts, activate, activate_starts, active_lab, active_starts
from ._experiment import Analyze, BuildSequence, Experiment
from ._library import ExperimentLibrary, LibraryEntry, LibraryError
from ._plan import experiment_plan, plan_request
from ._preprocess import SWITCH_INTERVAL, Preprocessor
from ._request import RunRequest, first_error
from ._runner import (
    ExperimentResult,
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
