"""Devices from configuration: building, clear load errors, set with read-back."""

from __future__ import annotations

from pathlib import Path

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine

from orchestrion.devices import DeviceState, ReadoutRole, build_devices, connect_devices, load_lab_config
from orchestrion.errors import DeviceConfigError, DeviceError
from orchestrion.experiment import set_with_readback

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
        "devices:\n  rf:\n    class: orchestrion.sim.RFSynthesizer\n"
        "    enabled: false\n    args: {trap: '@ion'}\n",
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
