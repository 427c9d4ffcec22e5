"""Devices as configuration: the YAML files in `devices/` and their model.

A configuration names two kinds of things, each built from a dotted class (or factory)
path with keyword arguments: *resources*, shared objects that devices refer to (the
simulated ion that several simulated devices act on, a lab's driver connection), and
*devices*, the ophyd-async devices that runs use.  Nothing here knows what any of them
is: a lab on EPICS and the simulated lab are configured the same way.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrion._yaml import load_yaml
from orchestrion.errors import DeviceConfigError

SECTIONS = ("include", "resources", "devices")


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


_ARGS_DESCRIPTION = (
    "Keyword arguments of the class; '@name' is a resource or a device defined before it, "
    "'${setting}' the value of an Orchestrion setting (for example '${sim_time_scale}')"
)


class ResourceEntry(BaseModel):
    """A shared object that devices refer to by '@name' (not a device: never read or moved)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_: str = Field(alias="class", description="Dotted path of the class or factory")
    description: str = ""
    args: dict[str, Any] = Field(default_factory=dict, description=_ARGS_DESCRIPTION)


class DeviceEntry(BaseModel):
    """One device: which class, with which arguments, and how it is read out."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_: str = Field(alias="class", description="Dotted path of the device class or factory")
    role: ReadoutRole = ReadoutRole.ON_REQUEST
    enabled: bool = True
    description: str = ""
    timeout: float | None = Field(
        None, gt=0, le=600, description="Seconds the device may take to connect (default: the lab's)"
    )
    args: dict[str, Any] = Field(default_factory=dict, description=_ARGS_DESCRIPTION)


class LabConfig(BaseModel):
    """The contents of the `devices/` directory, merged."""

    model_config = ConfigDict(extra="forbid")

    resources: dict[str, ResourceEntry] = Field(default_factory=dict)
    devices: dict[str, DeviceEntry] = Field(default_factory=dict)
    sources: dict[str, Path] = Field(default_factory=dict, description="The file that defined each resource and device")


def load_lab_config(directory: Path) -> LabConfig:
    """Read every `*.yaml` file in ``directory`` (sorted) into one lab configuration.

    A file may ``include`` other files (paths relative to it) before its own entries:
    an example directory can extend the demo lab without copying it.
    """
    if not directory.is_dir():
        raise DeviceConfigError(f"device configuration directory {directory} does not exist")
    merged, loaded = LabConfig(), set[Path]()
    for path in sorted(directory.glob("*.yaml")):
        _load_file(path.resolve(), merged, loaded, chain=())
    return merged


def _load_file(path: Path, merged: LabConfig, loaded: set[Path], chain: tuple[Path, ...]) -> None:
    if path in chain:
        raise DeviceConfigError(f"{path}: included from itself")
    if path in loaded:
        return  # included by two files: its entries are in already
    loaded.add(path)
    try:
        content = load_yaml(path.read_text()) or {}
    except OSError as exc:
        raise DeviceConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise DeviceConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(content, dict):
        raise DeviceConfigError(f"{path}: expected a mapping with 'devices' (and optionally 'resources', 'include')")
    extra = set(content) - set(SECTIONS)
    if extra:
        raise DeviceConfigError(f"{path}: unknown section '{sorted(extra)[0]}' (sections: {', '.join(SECTIONS)})")
    includes = content.get("include") or []
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise DeviceConfigError(f"{path}: include: expected a list of file paths")
    for included in includes:
        _load_file((path.parent / included).resolve(), merged, loaded, (*chain, path))
    for section, model, target in (
        ("resources", ResourceEntry, merged.resources),
        ("devices", DeviceEntry, merged.devices),
    ):
        entries = content.get(section) or {}
        if not isinstance(entries, dict):
            raise DeviceConfigError(f"{path}: {section}: expected a mapping of names to entries")
        kind = section[:-1]
        for name, raw in entries.items():
            if name in merged.sources:
                raise DeviceConfigError(
                    f"{path}: {kind} '{name}': the name is already defined in {merged.sources[name]}"
                )
            try:
                target[name] = model.model_validate(raw)  # type: ignore[assignment]
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "entry"
                raise DeviceConfigError(f"{path}: {kind} '{name}': {field}: {first['msg']}") from None
            merged.sources[name] = path
