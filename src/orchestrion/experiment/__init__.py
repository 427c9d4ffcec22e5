"""Experiments: declarations, scans, pre-processing and the plan that runs them."""

from ._experiment import Analyze, BuildSequence, Experiment
from ._library import ExperimentLibrary, LibraryEntry, LibraryError
from ._plan import experiment_plan
from ._preprocess import Preprocessor
from ._runner import (
    ExperimentResult,
    RunRequest,
    data_key_suffix,
    flatten_ids,
    nest_by_id,
    prepare_run,
    read_parameters,
    run_experiment,
    set_with_readback,
)
from ._scan import ScanAxis, ScanPattern, ScanPoint, expand_scan

__all__ = [
    "Analyze",
    "BuildSequence",
    "Experiment",
    "ExperimentLibrary",
    "ExperimentResult",
    "LibraryEntry",
    "LibraryError",
    "Preprocessor",
    "RunRequest",
    "ScanAxis",
    "ScanPattern",
    "ScanPoint",
    "data_key_suffix",
    "expand_scan",
    "experiment_plan",
    "flatten_ids",
    "nest_by_id",
    "prepare_run",
    "read_parameters",
    "run_experiment",
    "set_with_readback",
]
