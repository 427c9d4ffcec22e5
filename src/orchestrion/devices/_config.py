"""Devices as configuration: the YAML files in `devices/` and their model."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrion._yaml import load_yaml
from orchestrion.errors import DeviceConfigError
from orchestrion.sim import IonTrapModel


class ReadoutRole(StrEnum):
    """How a device's readings reach a run's documents."""

    MONITORED = "monitored"
    """Read at every scan point, in the point's event (with its point id)."""
    BASELINE = "baseline"
    """Read once before and once after the scan, in the 'baseline' stream."""
    ASYNC = "async"
    """Reports on its own clock during the run, in a stream of its own."""
    ON_REQUEST = "on_request"
    """Read only when a plan asks for it."""


class DeviceEntry(BaseModel):
    """One device: which class, with which arguments, and how it is read out."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_: str = Field(alias="class", description="Dotted path of the device class")
    role: ReadoutRole = ReadoutRole.ON_REQUEST
    enabled: bool = True
    description: str = ""
    args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Keyword arguments of the class; '@name' refers to another device, '@simulation' to the simulated ion"
        ),
    )


class LabConfig(BaseModel):
    """The contents of the `devices/` directory, merged."""

    model_config = ConfigDict(extra="forbid")

    simulation: IonTrapModel = Field(default_factory=IonTrapModel)
    devices: dict[str, DeviceEntry] = Field(default_factory=dict)
    sources: dict[str, Path] = Field(default_factory=dict, description="The file that defined each device")


def load_lab_config(directory: Path) -> LabConfig:
    """Read every `*.yaml` file in ``directory`` (sorted) into one lab configuration."""
    if not directory.is_dir():
        raise DeviceConfigError(f"device configuration directory {directory} does not exist")
    simulation: dict[str, Any] = {}
    devices: dict[str, DeviceEntry] = {}
    sources: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            content = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DeviceConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(content, dict):
            raise DeviceConfigError(f"{path}: expected a mapping with 'devices' (and optionally 'simulation')")
        extra = set(content) - {"simulation", "devices"}
        if extra:
            raise DeviceConfigError(f"{path}: unknown section '{sorted(extra)[0]}'")
        simulation.update(content.get("simulation") or {})
        for name, raw in (content.get("devices") or {}).items():
            if name in devices:
                raise DeviceConfigError(f"{path}: device '{name}' is already defined in {sources[name]}")
            try:
                devices[name] = DeviceEntry.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                raise DeviceConfigError(f"{path}: device '{name}': {field}: {first['msg']}") from None
            sources[name] = path
    try:
        model = IonTrapModel.model_validate(simulation)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DeviceConfigError(
            f"{directory}: simulation.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        ) from None
    return LabConfig(simulation=model, devices=devices, sources=sources)
