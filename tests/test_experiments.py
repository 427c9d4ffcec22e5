"""Experiments of the library on the simulated lab: documents, metadata, calibration, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from bluesky import RunEngine

from orchestrion.errors import InputError, ParameterError, ScanSpecError
from orchestrion.experiment import RunRequest, flatten_ids
from orchestrion.lab import Lab


def _plan(lab: Lab, name: str) -> Any:
    return lab.library.entry(name).plan


def _events(docs: dict[str, list[Any]], stream: str) -> list[dict[str, Any]]:
    descriptors = {d["uid"] for d in docs["descriptor"] if d["name"] == stream}
    return [e for e in docs["event"] if e["descriptor"] in descriptors]


def test_library_lists_the_four_experiments_with_declared_parameters(lab: Lab) -> None:
    assert sorted(lab.library.names()) == ["calibrate_frequency", "rabi_flop", "ramsey", "spectroscopy"]
    for experiment in lab.library:
        ids = experiment.parameter_ids
        assert "qubit.frequency" in ids
        assert all(spec.unit is not None and spec.description for spec in experiment.parameters)


def test_spectroscopy_emits_one_event_per_point_with_metadata(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]
) -> None:
    result = RE(_plan(lab, "spectroscopy")(scan=["spectroscopy.detuning=-100e3:100e3:11"], shots=50, md={"job_id": 7}))
    assert result.exit_status == "success"
    (start,) = docs["start"]
    assert start["experiment"] == "spectroscopy"
    assert start["job_id"] == 7
    assert start["num_points"] == 11
    assert start["scan"]["axes"][0]["id"] == "spectroscopy.detuning"
    parameters = flatten_ids(start["parameters"], lambda leaf: isinstance(leaf, dict) and "value" in leaf)
    assert parameters["qubit.frequency"]["value"] == lab.parameters.get("qubit.frequency").value
    assert set(parameters) == set(lab.library.experiment("spectroscopy").parameter_ids)
    primary = _events(docs, "primary")
    assert [e["data"]["point-index"] for e in primary] == list(range(11))
    assert next(e["data"]["point-spectroscopy_detuning"] for e in primary) == -100e3
    assert all(len(e["data"]["sequencer-counts"]) == 50 for e in primary)
    assert len(_events(docs, "baseline")) == 2
    (analysis,) = _events(docs, "analysis")
    assert "fit-center" in analysis["data"]
    assert docs["stop"][0]["exit_status"] == "success"


def test_scanning_a_device_parameter_sets_and_reads_it_back(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]
) -> None:
    RE(_plan(lab, "spectroscopy")(scan=["rf.frequency=199.95e6:200.05e6:5"], shots=20))
    primary = _events(docs, "primary")
    readbacks = [e["data"]["rf-frequency-readback"] for e in primary]
    assert readbacks == pytest.approx([199.95e6, 199.975e6, 200e6, 200.025e6, 200.05e6], abs=1.0)
    assert docs["start"][0]["scan"]["axes"][0]["kind"] == "device"


def test_calibration_finds_the_true_frequency_and_writes_it_back(lab: Lab, RE: RunEngine) -> None:
    before = lab.parameters.get("qubit.frequency").value
    true_frequency = lab.devices.resource("ion").qubit_frequency()
    result = RE(_plan(lab, "calibrate_frequency")(shots=200))
    written = result.plan_result.parameters_written["qubit.frequency"]
    fit = result.plan_result.analysis
    assert written.value == fit["qubit_frequency"]
    assert abs(written.value - true_frequency) < max(5 * fit["center_err"], 2e3)
    assert abs(before - true_frequency) > 10e3  # the default really was off
    assert lab.parameters.get("qubit.frequency").value == written.value
    assert "calibrate_frequency run" in lab.parameters.get("qubit.frequency").source


def test_rabi_flop_fit_gives_the_rabi_frequency_of_the_configured_amplitude(lab: Lab, RE: RunEngine) -> None:
    # On resonance: use the true frequency for this run only.
    on_resonance = {"qubit.frequency": lab.devices.resource("ion").qubit_frequency()}
    result = RE(_plan(lab, "rabi_flop")(parameters=on_resonance, shots=200))
    fit = result.plan_result.analysis
    expected = 0.5 * lab.devices.resource("ion").model.max_rabi_frequency
    assert fit["frequency"] == pytest.approx(expected, abs=max(5 * fit["frequency_err"], 1e3))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"parameters": {"qubit.frequency": 1.0}}, ParameterError, "below the minimum"),
        ({"parameters": {"qubit.frequency": "fast"}}, ParameterError, "not a number"),
        ({"parameters": {"no.such": 1}}, ParameterError, "reads no parameter 'no.such'"),
        ({"scan": ["spectroscopy.detuning=-9e6:0:3"]}, ParameterError, "below the minimum"),
        ({"scan": ["spectroscopy.detuning=1:2"]}, ScanSpecError, "START:STOP:NUM"),
        ({"scan": ["rf.frequency=1:2:3"]}, ParameterError, "outside the range"),
        ({"scan": ["sequencer.program=1:2:3"]}, ScanSpecError, "neither a parameter"),
        ({"shots": 0}, InputError, "shots"),
        ({"pattern": "spiral"}, ScanSpecError, "unknown scan pattern"),
    ],
)
def test_bad_input_is_refused_before_any_document_or_hardware_move(
    lab: Lab,
    RE: RunEngine,
    docs: dict[str, list[Any]],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    sequencer = lab.devices.usable("sequencer")
    with pytest.raises(error, match=message):
        RE(_plan(lab, "spectroscopy")(**kwargs))
    assert docs == {}
    assert sequencer.executions == []
    assert lab.parameters.get("qubit.frequency").source == "default"


def test_an_invalid_sequence_is_refused_before_the_run_opens(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]
) -> None:
    # A pi time at its declared maximum is a valid parameter but too long a pulse for the sequencer.
    with pytest.raises(InputError, match=r"broken: invalid sequence: operation 1 \(pulse 'pi'\)"):
        RE(_invalid(lab))
    assert docs == {}


def _invalid(lab: Lab) -> Any:
    from orchestrion.experiment import Experiment, run_experiment
    from orchestrion.sequence import PulseSequence

    base = lab.library.experiment("spectroscopy")

    def too_long(p: Any, shots: int) -> PulseSequence:
        return base.build_sequence({**p, "qubit.pi_time": 2.0}, shots)

    broken = Experiment(
        name="broken",
        description="",
        parameters=base.parameters,
        build_sequence=too_long,
        default_scans=base.default_scans,
    )
    return run_experiment(broken, lab, RunRequest(experiment="broken"))


def test_a_job_reads_its_own_parameters_as_of_submission_and_shared_ones_at_their_latest(
    lab: Lab,
    RE: RunEngine,
    docs: dict[str, list[Any]],
) -> None:
    from datetime import UTC, datetime

    lab.parameters.set("spectroscopy.detuning", 1e3, source="test")
    submitted = datetime.now(UTC).isoformat()
    lab.parameters.set("spectroscopy.detuning", 2e3, source="edited after submission")
    lab.parameters.set("qubit.pi_time", 12e-6, source="calibrated after submission")
    RE(_plan(lab, "spectroscopy")(scan=["qubit.amplitude=0.5:0.5:1"], shots=5, md={"parameters_at": submitted}))
    parameters = flatten_ids(docs["start"][0]["parameters"], lambda leaf: isinstance(leaf, dict) and "value" in leaf)
    assert parameters["spectroscopy.detuning"]["value"] == 1e3
    assert parameters["qubit.pi_time"]["value"] == 12e-6
    assert docs["start"][0]["parameters_at"] == submitted


def test_values_at_their_declared_bounds_are_accepted_and_compile(lab: Lab) -> None:
    from orchestrion.experiment import RunLimits, RunRequest, prepare_run

    experiment = lab.library.experiment("spectroscopy")
    edge = {"qubit.pi_time": 0.009, "cooling.duration": 0.1, "detection.threshold": 1000}
    request = prepare_run(
        experiment,
        lab.devices,
        RunRequest(experiment="spectroscopy", parameters=edge, shots=100_000),
        limits=RunLimits.of(lab.config),
    )
    values = {pid: v.value for pid, v in lab.parameters.snapshot(experiment.parameter_ids).items()} | dict(
        request.overrides
    )
    sequence = experiment.build_sequence(values | dict(next(request.points()).values), request.shots)
    assert sequence.shots == 100_000
    assert sequence.operations[1].duration == 0.009  # type: ignore[union-attr]
