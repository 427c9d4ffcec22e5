"""EPICS devices from configuration, against a real soft IOC (pythonSoftIOC) on loopback.

The IOC is the example lab's own (`devices/epics-example/ioc.py`), in a process of its
own, with Channel Access and PV Access on free ports of 127.0.0.1 so nothing else on
the machine sees it; the configuration is the shipped example
(`devices/epics-example`, which includes the demo lab).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from orchestrion.cli import cli
from orchestrion.client import Client
from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.devices import DeviceState, describe_devices, disable_device, load_devices
from orchestrion.errors import DeviceConnectionError, DeviceError, InputError
from orchestrion.experiment import RunLimits, RunRequest
from orchestrion.jobs import JobRequest, JobStatus, validate_request
from orchestrion.pipeline import BUNDLED, open_embedded_catalog
from orchestrion.services import down, up
from orchestrion.session import EmbeddedSession

from .support import free_port, stack_config, stop_process, wait_until

pytestmark = pytest.mark.epics

EXAMPLE = Path(__file__).resolve().parents[1] / "devices" / "epics-example"


@pytest.fixture(scope="session")
def epics_env() -> Iterator[dict[str, str]]:
    """Channel Access and PV Access on loopback and free ports, for this process and the IOC.

    Session-wide: the CA client library reads these once, when this process first uses it.
    """
    ports: list[int] = []
    while len(ports) < 4:
        port = free_port()
        if port not in ports:
            ports.append(port)
    ca_server, ca_repeater, pva_server, pva_broadcast = (str(p) for p in ports)
    env = {
        "EPICS_CA_SERVER_PORT": ca_server,
        "EPICS_CA_REPEATER_PORT": ca_repeater,
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_SERVER_PORT": pva_server,
        "EPICS_PVA_BROADCAST_PORT": pva_broadcast,
        "EPICS_PVAS_SERVER_PORT": pva_server,
        "EPICS_PVAS_BROADCAST_PORT": pva_broadcast,
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


@pytest.fixture
def ioc(epics_env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """The example lab's soft IOC, started for one test and stopped after it."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "ioc.py"), "--prefix", "ORCH"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | epics_env,
    )
    output: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("IOC ORCH ready" in line for line in output) or process.poll() is not None, 60)
        assert process.poll() is None, "".join(output)
        yield process
    finally:
        stop_process(process, timeout=10)
        reader.join(timeout=10)
        process.stdout.close()


@pytest.fixture
def epics_config(home: Path, monkeypatch: pytest.MonkeyPatch, epics_env: dict[str, str]) -> OrchestrionConfig:
    monkeypatch.setenv("ORCHESTRION_DEVICES_DIR", str(EXAMPLE))
    return load_config()


def _bundled(path: str) -> dict[str, np.ndarray[Any, Any]]:
    with h5py.File(path, "r") as f:
        data = f["entry/data"]
        return {key: data[key][()] for key in data}


def test_a_scan_moves_the_epics_axis_and_bundles_its_signals_into_hdf5_and_tiled(
    ioc: subprocess.Popen[str], epics_config: OrchestrionConfig
) -> None:
    session = EmbeddedSession(epics_config)
    try:
        summary = session.run(RunRequest(experiment="spectroscopy", scan=("stage=0:2:11",), shots=10))
    finally:
        session.close()
    assert summary.status == "success"
    assert summary.points == 11
    assert summary.hdf5 is not None
    data = _bundled(summary.hdf5)
    # The axis was set and read back at each point; the IOC's read-back travelled there.
    assert data["stage"] == pytest.approx(np.linspace(0.0, 2.0, 11), abs=1e-3)
    # The beam current updates on the IOC's clock (async role): the bundler put its last
    # value before each point into the point, a real reading every time.
    assert data["bundle_complete"].all()
    assert ((data["beam_current"] > 290.0) & (data["beam_current"] < 310.0)).all()
    # The diode was acquired at every point (monitored role): its peak sits at stage = 1.
    assert int(np.argmax(data["diode"])) == 5
    assert data["diode"][5] > 5 * data["diode"][0]

    # The stage's speed (baseline role) was read before and after the scan.
    with h5py.File(summary.hdf5, "r") as f:
        assert f["entry/streams/baseline/stage_velocity"][()].tolist() == [20.0, 20.0]

    assert summary.tiled is not None
    catalog = open_embedded_catalog(epics_config.home)
    try:
        run = catalog.client[summary.run_uid]
        table = run[BUNDLED].read()
        assert table["stage"].values.tolist() == pytest.approx(data["stage"].tolist())
        assert table["beam_current"].values.tolist() == pytest.approx(data["beam_current"].tolist())
        assert run.metadata["stop"]["exit_status"] == "success"
    finally:
        catalog.close()


def test_the_ioc_killed_mid_scan_fails_the_run_naming_the_device_with_the_points_kept(
    ioc: subprocess.Popen[str], epics_config: OrchestrionConfig
) -> None:
    config = epics_config.model_copy(update={"tiled_enabled": False})
    session = EmbeddedSession(config)
    started: list[str] = []
    primary: set[str] = set()
    killed_after = 4

    def kill_the_ioc(name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            started.append(doc["uid"])
        if name == "descriptor" and doc["name"] == "primary":
            primary.add(doc["uid"])
        if name == "event" and doc["descriptor"] in primary and doc["seq_num"] == killed_after and ioc.poll() is None:
            ioc.send_signal(signal.SIGKILL)
            ioc.wait()

    try:
        with pytest.raises(DeviceError, match=rf"device '(stage|diode)' failed at point {killed_after} "):
            session.run(
                RunRequest(experiment="spectroscopy", scan=("stage=0:2:21",), shots=10), extra_callbacks=[kill_the_ioc]
            )
        assert session.pipeline is not None
        assert session.pipeline.wait_catalogued(started[0])
        summary = session.pipeline.summaries.runs[started[0]]
    finally:
        session.close()
    assert summary.status == "fail"
    assert "failed at point" in summary.reason
    assert f"({killed_after} points kept)" in summary.reason
    assert summary.points == killed_after
    assert summary.hdf5 is not None
    data = _bundled(summary.hdf5)
    assert data["stage"] == pytest.approx(np.linspace(0.0, 2.0, 21)[:killed_after], abs=1e-3)
    with h5py.File(summary.hdf5, "r") as f:
        assert f["entry/status"][()].decode() == "fail"


def test_a_pv_that_does_not_exist_leaves_its_device_out_with_the_reason(
    ioc: subprocess.Popen[str], home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "lab.yaml").write_text(
        f"include: [{EXAMPLE / 'epics.yaml'}]\n"
        "devices:\n"
        "  ghost:\n    class: orchestrion.devices.epics.EpicsSignal\n    role: async\n    timeout: 1\n"
        "    args: {read_pv: 'ORCH:NO:SUCH:PV'}\n"
        "  sample_y:\n    class: ophyd_async.epics.motor.Motor\n    timeout: 1\n    args: {prefix: 'ORCH:NO:MOTOR'}\n"
    )
    monkeypatch.setenv("ORCHESTRION_DEVICES_DIR", str(devices))
    config = load_config()

    listed = CliRunner().invoke(cli, ["devices", "--json"], obj={"config": config})
    assert listed.exit_code == 0, listed.output
    states = {d["name"]: d for d in json.loads(listed.output)}
    assert states["ghost"]["state"] == DeviceState.FAILED.value
    assert states["ghost"]["reason"] == "could not connect within 1 s: ca://ORCH:NO:SUCH:PV"
    assert states["sample_y"]["state"] == DeviceState.FAILED.value
    assert states["sample_y"]["reason"].startswith("could not connect within 1 s: ca://ORCH:NO:MOTOR.")
    # The rest of the lab started.
    assert {name for name, d in states.items() if d["state"] == "connected"} == {
        "rf", "sequencer", "field", "stage", "stage_velocity", "beam_current", "diode",
    }  # fmt: skip

    # A process that connects nothing (the API server) lists them from that report.
    reported = {d["name"]: d for d in describe_devices(load_devices(config, connection_reports=True))}
    assert reported["ghost"]["state"] == DeviceState.FAILED.value
    assert reported["ghost"]["reason"].startswith("could not connect within 1 s: ca://ORCH:NO:SUCH:PV (process ")
    assert reported["stage"]["state"] == DeviceState.CONNECTED.value

    # An experiment that needs it is refused, naming it, before a run opens...
    session = EmbeddedSession(config)
    try:
        with pytest.raises(InputError, match=r"scan 'sample_y' needs device 'sample_y', which failed: could not"):
            session.run(RunRequest(experiment="spectroscopy", scan=("sample_y=0:1:3",), shots=5))
        assert not (config.data_dir).exists() or not list(config.data_dir.glob("*.h5"))
        # ...and the rest runs: the ghost is simply not monitored.
        summary = session.run(RunRequest(experiment="spectroscopy", scan=("stage=0:1:3",), shots=5))
        assert summary.status == "success"
    finally:
        session.close()

    # A submission (a process that connects nothing) refuses it too, from the last report.
    library = EmbeddedSession(config).library
    with pytest.raises(InputError, match="needs device 'sample_y', which failed: could not connect within 1 s"):
        validate_request(
            library,
            load_devices(config),
            JobRequest(experiment="spectroscopy", scan=("sample_y=0:1:3",)),
            limits=RunLimits.of(config),
        )

    # A strict lab refuses to start instead.
    strict = EmbeddedSession(config.model_copy(update={"devices_strict": True}))
    try:
        with pytest.raises(DeviceConnectionError, match=r"ghost: could not connect within 1 s.*sample_y"):
            strict.open()
    finally:
        strict.close()


@pytest.fixture
def epics_stack(ioc: subprocess.Popen[str], tmp_path: Path) -> Iterator[OrchestrionConfig]:
    """The services stack (queue server, Tiled, ...) on the example EPICS lab."""
    # Every port the stack listens on, the API server's too, chosen free (`stack_config`):
    # one left at its default collided with another process on the machine.
    config = stack_config(tmp_path / "home", devices_dir=EXAMPLE)
    try:
        up(config)  # the worker inherits this process's EPICS_* variables
        yield config
    finally:
        down(config, force=True)


@pytest.mark.stack
def test_a_queued_job_scans_the_epics_axis_into_hdf5_and_the_stacks_tiled(epics_stack: OrchestrionConfig) -> None:
    with Client.local(epics_stack) as client:
        job = client.submit("spectroscopy", scan=["stage=0:2:5"], shots=5)
        done = job.wait(timeout=120)
        assert done["status"] == JobStatus.DONE, done["error"]
        assert done["points"] == 5
        assert done["hdf5"] is not None
        data = _bundled(done["hdf5"])
        assert data["stage"] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0], abs=1e-3)
        assert ((data["beam_current"] > 290.0) & (data["beam_current"] < 310.0)).all()
        table = job.data()[BUNDLED].read()
        assert table["stage"].values.tolist() == pytest.approx(data["stage"].tolist())

        # A device switched off is refused at submission, naming it, with nothing queued.
        disable_device(epics_stack, "stage", user="operator", reason="beam-line search")
        with pytest.raises(InputError, match="needs device 'stage', which is disabled: disabled by operator"):
            client.submit("spectroscopy", scan=["stage=0:1:3"])
        assert [j["id"] for j in client.jobs()] == [done["id"]]


def test_a_baseline_device_lost_after_the_last_point_fails_the_run_naming_it(
    ioc: subprocess.Popen[str], epics_config: OrchestrionConfig
) -> None:
    config = epics_config.model_copy(update={"tiled_enabled": False})
    session = EmbeddedSession(config)
    started: list[str] = []
    primary: set[str] = set()

    def kill_after_the_last_point(name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            started.append(doc["uid"])
        if name == "descriptor" and doc["name"] == "primary":
            primary.add(doc["uid"])
        if name == "event" and doc["descriptor"] in primary and doc["seq_num"] == 3 and ioc.poll() is None:
            ioc.send_signal(signal.SIGKILL)
            ioc.wait()

    try:
        with pytest.raises(DeviceError, match="baseline device 'stage_velocity' could not be read at the end"):
            session.run(
                RunRequest(experiment="spectroscopy", scan=("spectroscopy.detuning=-1e4:1e4:3",), shots=5),
                extra_callbacks=[kill_after_the_last_point],
            )
        assert session.pipeline is not None
        assert session.pipeline.wait_catalogued(started[0])
        summary = session.pipeline.summaries.runs[started[0]]
    finally:
        session.close()
    # Every point was measured and is kept; the run does not claim success.
    assert summary.status == "fail"
    assert "stage_velocity" in summary.reason
    assert summary.points == 3
    assert summary.hdf5 is not None
    assert len(_bundled(summary.hdf5)["diode"]) == 3
