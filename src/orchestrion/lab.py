"""The lab: configuration, devices, parameters and the experiment library, together.

Plans in `plans/` run against the active lab (`orchestrion.experiment.active_lab`),
which whoever hosts the RunEngine (the CLI, an IPython session, the queue-server
worker) opens through `orchestrion.session.LabSession`.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrion.config import OrchestrionConfig
from orchestrion.devices import DeviceRegistry, connect_devices, load_devices
from orchestrion.experiment import ExperimentLibrary, activate, active_lab
from orchestrion.parameters import ParameterStore, open_parameter_store

__all__ = ["Lab", "activate", "active_lab", "build_lab_devices", "load_library_and_devices", "open_lab"]


@dataclass
class Lab:
    """A lab that plans can run against (an `orchestrion.experiment.LabContext`)."""

    config: OrchestrionConfig
    library: ExperimentLibrary
    devices: DeviceRegistry
    parameters: ParameterStore

    def close(self) -> None:
        self.parameters.close()


def build_lab_devices(config: OrchestrionConfig, *, strict: bool = True) -> DeviceRegistry:
    """The configured devices, built but not connected (``strict=False``: failures marked)."""
    return load_devices(config, strict=strict)


def load_library_and_devices(config: OrchestrionConfig) -> tuple[ExperimentLibrary, DeviceRegistry]:
    """Everything that can be checked without writing anything or touching hardware."""
    return ExperimentLibrary.load(config.plans_dir), build_lab_devices(config)


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
