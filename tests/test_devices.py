"""Devices from configuration: building, clear load errors, set with read-back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine
from click.testing import CliRunner
from ophyd_async.core import StandardReadable, soft_signal_rw

from orchestrion.cli import cli
from orchestrion.config import OrchestrionConfig
from orchestrion.devices import (
    DeviceState,
    ReadoutRole,
    build_devices,
    connect_devices,
    device_history,
    load_devices,
    load_lab_config,
)
from orchestrion.errors import DeviceConfigError, DeviceConnectionError, DeviceError, InputError
from orchestrion.experiment import RunLimits, set_with_readback
from orchestrion.jobs import JobRequest, validate_request
from orchestrion.lab import Lab

LAB = Path(__file__).resolve().parents[1] / "devices"


ION = "resources:\n  ion:\n    class: orchestrion.sim.simulated_ion_trap\n    args: {time_scale: '${sim_time_scale}'}\n"
SETTINGS = {"sim_time_scale": 0.1, "sim_seed": 5}


def _write(tmp_path: Path, text: str, *, ion: bool = True) -> Path:
    directory = tmp_path / "devices"
    directory.mkdir()
    (directory / "lab.yaml").write_text((ION if ion else "") + text)
    return directory


def test_demo_lab_builds_with_roles(RE: RunEngine) -> None:
    registry = build_devices(load_lab_config(LAB), settings={"sim_time_scale": 0.01, "sim_seed": 1})
    connect_devices(registry)
    roles = {d.name: d.role for d in registry}
    assert roles == {"rf": ReadoutRole.BASELINE, "sequencer": ReadoutRole.MONITORED, "field": ReadoutRole.ASYNC}
    assert all(d.state is DeviceState.CONNECTED for d in registry)
    assert registry.resolve_settable("rf.frequency") is registry.usable("rf").frequency
    assert registry.resolve_settable("sequencer") is None
    assert registry.resolve_settable("nothing.here") is None
    assert [s.name for s in registry.async_signals()] == ["field-field"]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "devices:\n  rf:\n    class: orchestrion.sim.NoSuchSynth\n",
            r"device 'rf' \(.*lab.yaml\): class: module 'orchestrion.sim' has no class 'NoSuchSynth'",
        ),
        ("devices:\n  rf:\n    class: nowhere.Synth\n", r"device 'rf' .*class: cannot import module 'nowhere'"),
        (
            "devices:\n  rf:\n    class: orchestrion.sim.RFSynthesizer\n    args: {trap: '@ion', colour: red}\n",
            r"device 'rf' .*: args.colour: not an argument of orchestrion.sim.RFSynthesizer",
        ),
        (
            "devices:\n  seq:\n    class: orchestrion.sim.Sequencer\n    args: {trap: '@ion', lo: '@rf'}\n",
            r"device 'seq' .*args.lo: refers to '@rf', which is not defined",
        ),
        ("devices:\n  rf:\n    class: orchestrion.sim.RFSynthesizer\n    role: sometimes\n", r"device 'rf': role"),
        ("devices:\n  rf:\n    klass: orchestrion.sim.RFSynthesizer\n", r"device 'rf'"),
        ("gadgets: {}\n", r"unknown section 'gadgets'"),
    ],
)
def test_a_device_that_cannot_be_built_stops_the_load_naming_it(tmp_path: Path, yaml_text: str, message: str) -> None:
    directory = _write(tmp_path, yaml_text)
    with pytest.raises(DeviceConfigError, match=message):
        build_devices(load_lab_config(directory), settings=SETTINGS)


def test_disabled_devices_are_listed_but_not_built(tmp_path: Path) -> None:
    directory = _write(
        tmp_path,
        "devices:\n  rf:\n    class: orchestrion.sim.RFSynthesizer\n    enabled: false\n    args: {trap: '@ion'}\n",
    )
    registry = build_devices(load_lab_config(directory), settings=SETTINGS)
    assert registry.devices["rf"].state is DeviceState.DISABLED
    with pytest.raises(DeviceConfigError, match="device 'rf' is disabled"):
        registry.usable("rf")


def _synth_registry(tmp_path: Path, glitch: float) -> object:
    directory = _write(
        tmp_path,
        "devices:\n  rf:\n    class: orchestrion.sim.RFSynthesizer\n"
        f"    args: {{trap: '@ion', settle_time: 0.01, glitch_probability: {glitch}}}\n",
    )
    registry = build_devices(load_lab_config(directory), settings=SETTINGS)
    connect_devices(registry)
    return registry


def test_set_with_readback_retries_until_the_device_reaches_the_value(tmp_path: Path, RE: RunEngine) -> None:
    registry = _synth_registry(tmp_path, glitch=0.5)
    channel = registry.usable("rf").frequency  # type: ignore[attr-defined]
    reached = []
    for target in (150e6, 151e6, 152e6, 153e6, 154e6, 155e6):
        result = RE(set_with_readback("rf.frequency", channel, target, retries=20))
        reached.append(result.plan_result)
    assert reached == pytest.approx([150e6, 151e6, 152e6, 153e6, 154e6, 155e6], abs=1.0)


def test_set_with_readback_fails_clearly_when_the_device_never_gets_there(tmp_path: Path, RE: RunEngine) -> None:
    registry = _synth_registry(tmp_path, glitch=1.0)
    channel = registry.usable("rf").frequency  # type: ignore[attr-defined]
    with pytest.raises(DeviceError, match=r"rf.frequency: read back .* after setting 1.5e\+08, 3 attempts"):
        RE(set_with_readback("rf.frequency", channel, 150e6, retries=3))


def test_out_of_range_set_is_refused_by_the_device(tmp_path: Path, RE: RunEngine) -> None:
    registry = _synth_registry(tmp_path, glitch=0.0)
    channel = registry.usable("rf").frequency  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"rf-frequency: 1e\+10 Hz is outside the range"):
        RE(bps.mv(channel, 1e10))
    assert RE(bps.rd(channel.readback)).plan_result == 200e6


def test_the_field_monitors_first_update_is_a_measured_field(
    lab: Lab, RE: RunEngine, docs: dict[str, list[Any]]
) -> None:
    # A fresh process: the monitor's first update used to be the soft signal's initial 0.0.
    RE(_plan(lab, "spectroscopy")(scan=["spectroscopy.detuning=-1e4:1e4:3"], shots=5))
    stream = {d["uid"]: d["name"] for d in docs["descriptor"]}
    field_events = [e for e in docs["event"] if stream[e["descriptor"]] == "field-field_monitor"]
    assert field_events, "the async monitor reported nothing"
    first = field_events[0]["data"]["field-field"]
    assert first == pytest.approx(lab.devices.resource("ion").model.reference_field, abs=0.2)


def _plan(lab: Lab, name: str) -> Any:
    return lab.library.entry(name).plan


def _cli(config: OrchestrionConfig, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), obj={"config": config})


def test_devices_switched_off_and_on_at_run_time_with_who_and_when(
    config: OrchestrionConfig, lab: Lab, RE: RunEngine
) -> None:
    done = _cli(config, "devices", "disable", "rf", "--reason", "synthesizer at repair", "--user", "alice", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["user"] == "alice"

    # The lab that was open before the switch refuses an experiment that needs rf, naming it...
    with pytest.raises(
        InputError, match=r"scan 'rf.frequency' needs device 'rf', which is disabled: disabled by alice"
    ):
        RE(_plan(lab, "spectroscopy")(scan=["rf.frequency=199.9e6:200.1e6:3"], shots=5))
    # ...and runs one that does not, without rf's baseline readings.
    result = RE(_plan(lab, "spectroscopy")(scan=["spectroscopy.detuning=-1e4:1e4:3"], shots=5))
    assert len(result.plan_result.points) == 3
    assert lab.devices.with_role(ReadoutRole.BASELINE) == []

    # A new process (another registry from the same home) sees the switch: kept across restarts.
    listing = {d["name"]: d for d in json.loads(_cli(config, "devices", "--json").output)}
    assert listing["rf"]["state"] == "disabled"
    assert listing["rf"]["enabled"] is False
    assert listing["rf"]["reason"].startswith("disabled by alice at ")
    assert listing["rf"]["reason"].endswith(": synthesizer at repair")
    assert listing["sequencer"]["state"] == "connected"
    with pytest.raises(InputError, match="needs device 'rf', which is disabled"):
        validate_request(
            lab.library,
            load_devices(config),
            JobRequest(experiment="spectroscopy", scan=("rf.frequency=2e8",)),
            limits=RunLimits.of(config),
        )

    assert _cli(config, "devices", "enable", "rf", "--user", "bob").exit_code == 0
    result = RE(_plan(lab, "spectroscopy")(scan=["rf.frequency=199.9e6:200.1e6:3"], shots=5))
    assert len(result.plan_result.points) == 3
    history = json.loads(_cli(config, "devices", "history", "rf", "--json").output)
    assert [(h["enabled"], h["user"]) for h in history] == [(False, "alice"), (True, "bob")]


def test_switching_a_device_the_lab_does_not_have_is_refused(config: OrchestrionConfig) -> None:
    done = _cli(config, "devices", "disable", "laser")
    assert done.exit_code == 2
    assert "no device named 'laser'" in done.output
    assert device_history(config) == []


def test_a_device_that_cannot_connect_is_left_out_and_strict_refuses_to_start(tmp_path: Path, RE: RunEngine) -> None:
    directory = _write(
        tmp_path,
        "devices:\n  slow:\n    class: tests.test_devices.NeverConnects\n    role: baseline\n    timeout: 0.2\n"
        "  rf:\n    class: orchestrion.sim.RFSynthesizer\n    args: {trap: '@ion'}\n",
    )
    registry = build_devices(load_lab_config(directory), settings=SETTINGS)
    connect_devices(registry)
    assert registry.devices["slow"].state is DeviceState.FAILED
    assert registry.devices["slow"].reason == "could not connect within 0.2 s"
    assert registry.devices["rf"].state is DeviceState.CONNECTED
    assert registry.with_role(ReadoutRole.BASELINE) == []

    strict = build_devices(load_lab_config(directory), settings=SETTINGS)
    with pytest.raises(DeviceConnectionError, match=r"slow: could not connect within 0.2 s"):
        connect_devices(strict, strict=True)


class NeverConnects(StandardReadable):
    """A driver whose hardware never answers."""

    def __init__(self, name: str = "") -> None:
        with self.add_children_as_readables():
            self.value = soft_signal_rw(float)
        super().__init__(name=name)

    async def connect(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()
