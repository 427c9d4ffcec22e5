"""Lab-specific additions to the HDF5 layout: the ``orchestrion.hdf5_plugins`` entry points."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import h5py

from orchestrion.schema import nexus_name

logger = logging.getLogger(__name__)

PLUGIN_GROUP = "orchestrion.hdf5_plugins"


@dataclass
class RunDocuments:
    """What a plugin's stop hook sees of the run."""

    start: Mapping[str, Any]
    stop: Mapping[str, Any] | None
    descriptors: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)


@runtime_checkable
class Hdf5Plugin(Protocol):
    """Extends the file layout; registered in the entry-point group ``orchestrion.hdf5_plugins``.

    The entry point names a class (or any callable) that takes no argument.  ``start``
    runs when the file is created, ``stop`` when the run ends (also for failed runs);
    both get the ``/entry`` group.  An exception in a plugin is logged; the file goes on.
    """

    def start(self, entry: h5py.Group, start: Mapping[str, Any]) -> None: ...

    def stop(self, entry: h5py.Group, run: RunDocuments) -> None: ...


@functools.cache
def _plugin_factories() -> tuple[tuple[str, Callable[[], Hdf5Plugin]], ...]:
    # Once per process: scanning the installed distributions' entry points took about
    # 10 ms, at every run's start.
    factories = []
    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        try:
            factories.append((point.name, point.load()))
        except Exception:
            logger.exception("HDF5 plugin %r could not be loaded; it is skipped", point.name)
    return tuple(factories)


def load_plugins() -> list[Hdf5Plugin]:
    """Fresh instances of the plugins in the ``orchestrion.hdf5_plugins`` entry-point group."""
    plugins: list[Hdf5Plugin] = []
    for name, factory in _plugin_factories():
        try:
            plugins.append(factory())
        except Exception:
            logger.exception("HDF5 plugin %r could not be made; it is skipped", name)
    return plugins


class InstrumentPlugin:
    """Writes ``/entry/instrument``: one NXcollection per device, naming its data keys.

    Each device group lists, as attributes, the original device name and per data key
    its data key, stream, units and source; it holds no data of its own (the values
    are in ``/entry/data``), so no device address is stored where data belongs.
    """

    def start(self, entry: h5py.Group, start: Mapping[str, Any]) -> None:
        return None

    def stop(self, entry: h5py.Group, run: RunDocuments) -> None:
        instrument = entry.require_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        for stream, descriptors in run.descriptors.items():
            for descriptor in descriptors:
                for obj, keys in (descriptor.get("object_keys") or {}).items():
                    device = instrument.require_group(nexus_name(obj))
                    device.attrs["NX_class"] = "NXcollection"
                    device.attrs["device"] = str(obj)
                    for key in keys:
                        spec = descriptor["data_keys"].get(key, {})
                        name = nexus_name(key)
                        if name in device:
                            continue
                        item = device.create_group(name)
                        item.attrs.update({"NX_class": "NXcollection", "data_key": key, "stream": stream,
                                           "source": str(spec.get("source", ""))})  # fmt: skip
                        if spec.get("units"):
                            item.attrs["units"] = str(spec["units"])
