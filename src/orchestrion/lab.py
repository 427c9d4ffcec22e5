"""The lab: configuration, devices, parameters and the experiment library, together.

Plans in `plans/` run against the active lab, which whoever hosts the RunEngine (the
CLI, an IPython session, the queue-server worker) opens and activates at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrion.config import OrchestrionConfig
from orchestrion.devices import DeviceRegistry, connect_devices, load_devices
from orchestrion.errors import OrchestrionError
from orchestrion.experiment import ExperimentLibrary
from orchestrion.parameters import ParameterStore, open_parameter_store


@dataclass
class Lab:
    config: OrchestrionConfig
    library: ExperimentLibrary
    devices: DeviceRegistry
    parameters: ParameterStore

    def close(self) -> None:
        self.parameters.close()


_active: Lab | None = None


def activate(lab: Lab | None) -> None:
    """Make ``lab`` the one that plans from the library run against (None: none)."""
    global _active
    _active = lab


def active_lab() -> Lab:
    """The lab of this process; plans call this when they start."""
    if _active is None:
        raise OrchestrionError("no lab is active in this process: open one with orchestrion.lab.open_lab()")
    return _active


def load_library_and_devices(config: OrchestrionConfig) -> tuple[ExperimentLibrary, DeviceRegistry]:
    """Everything that can be checked without writing anything or touching hardware."""
    library = ExperimentLibrary.load(config.plans_dir)
    devices = load_devices(config)
    return library, devices


def open_lab(
    config: OrchestrionConfig,
    *,
    library: ExperimentLibrary | None = None,
    devices: DeviceRegistry | None = None,
    connect: bool = True,
) -> Lab:
    """Open the parameter store, declare the library's parameters, connect the devices.

    Connecting runs in the RunEngine's event loop: create the RunEngine first.
    """
    if library is None or devices is None:
        library, devices = load_library_and_devices(config)
    parameters = open_parameter_store(config)
    try:
        parameters.declare(library.parameter_specs())
        if connect:
            connect_devices(devices, strict=config.devices_strict)
    except BaseException:
        parameters.close()
        raise
    return Lab(config=config, library=library, devices=devices, parameters=parameters)
