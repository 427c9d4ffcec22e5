"""The bluesky plan of a library experiment, made from its declaration.

Every experiment's plan has the same queue-server-friendly signature (builtins, literal
defaults, no ``*args``) and the same body; only its name and docstring differ, so they
are made here rather than written out once per experiment.
"""

from collections.abc import Generator
from typing import Any

from ._context import active_lab
from ._experiment import Experiment, ExperimentResult
from ._request import RunRequest

_PARAMETERS_DOC = """
Parameters
----------
scan
    Scans as "ID=START:STOP:NUM" or "ID=V1,V2,...", of parameters or device parameters
    ("rf.frequency"); several make a grid. Default: {default_scan}.
parameters
    Values for this run only, by parameter id; the stored values stay.
shots
    Shots per point (default {shots}).
repetitions
    How many times the whole scan is repeated.
pattern
    "linear", "shuffled" (a new order per repetition) or "centred".
md
    Metadata added to the run's start document.
"""


def plan_request(
    experiment: Experiment,
    scan: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
    shots: int | None = None,
    repetitions: int = 1,
    pattern: str = "linear",
    md: dict[str, Any] | None = None,
) -> RunRequest:
    """The request an experiment's plan makes of its arguments (the worker's `AheadPreparer`
    makes the same one of a queued job's arguments, to prepare it)."""
    return RunRequest.build(
        experiment=experiment.name,
        scan=scan,
        parameters=parameters or {},
        shots=shots,
        repetitions=repetitions,
        pattern=pattern,
        md=md or {},
    )


def experiment_plan(experiment: Experiment, summary: str, module: str) -> Any:
    """The plan that runs ``experiment`` on the active lab, documented by ``summary``.

    ``module`` is the defining module's ``__name__``, where the plan is said to live.
    """

    def plan(
        scan: list[str] | None = None,
        parameters: dict[str, Any] | None = None,
        shots: int | None = None,
        repetitions: int = 1,
        pattern: str = "linear",
        md: dict[str, Any] | None = None,
    ) -> Generator[Any, Any, ExperimentResult]:  # bluesky's MsgGenerator, without importing bluesky
        from ._runner import run_experiment  # bluesky and ophyd-async: when a plan runs, not when it is listed

        request = plan_request(experiment, scan, parameters, shots, repetitions, pattern, md)
        return (yield from run_experiment(experiment, active_lab(), request))

    default_scan = " and ".join(
        f'"{axis.spec_text()}"{_unit(experiment, axis.id)}' for axis in experiment.default_scans
    )
    plan.__name__ = plan.__qualname__ = experiment.name
    plan.__module__ = module
    plan.__doc__ = (
        summary.strip()
        + "\n"
        + _PARAMETERS_DOC.format(
            default_scan=default_scan or "none (one point per repetition)", shots=experiment.default_shots
        )
    )
    return plan


def _unit(experiment: Experiment, parameter_id: str) -> str:
    spec = experiment.spec(parameter_id)
    return f" ({spec.unit})" if spec is not None and spec.unit else ""
