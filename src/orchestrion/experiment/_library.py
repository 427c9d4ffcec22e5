"""The experiment library: the modules of `plans/`, loaded as one package."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from orchestrion.errors import OrchestrionError, UnknownExperimentError, did_you_mean, quoted
from orchestrion.parameters import ParameterSpec

from ._experiment import Experiment

PACKAGE = "orchestrion_plans"


class LibraryError(OrchestrionError):
    """A module of the experiment library that cannot be loaded."""


@dataclass(frozen=True)
class LibraryEntry:
    experiment: Experiment
    plan: Callable[..., Any]
    module: str


class ExperimentLibrary:
    """Experiments by name, each with its bluesky plan."""

    def __init__(self, entries: dict[str, LibraryEntry], directory: Path) -> None:
        self._entries = entries
        self.directory = directory

    @classmethod
    def load(cls, directory: Path) -> ExperimentLibrary:
        """Import every public module of ``directory``; each defines EXPERIMENT and its plan.

        The directory is imported as the package ``orchestrion_plans`` so that its
        modules can share helpers (``from ._ion import ...``); loading again replaces it.
        """
        directory = directory.resolve()
        if not (directory / "__init__.py").is_file():
            raise LibraryError(f"experiment library {directory} is not a package (no __init__.py)")
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        spec = importlib.util.spec_from_file_location(
            PACKAGE, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        assert spec is not None
        assert spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)

        entries: dict[str, LibraryEntry] = {}
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            module = _import(f"{PACKAGE}.{path.stem}", path)
            experiment = getattr(module, "EXPERIMENT", None)
            if not isinstance(experiment, Experiment):
                raise LibraryError(f"{path}: defines no EXPERIMENT (an orchestrion.experiment.Experiment)")
            plan = getattr(module, experiment.name, None)
            if not callable(plan):
                raise LibraryError(f"{path}: defines no plan function named '{experiment.name}'")
            if experiment.name in entries:
                raise LibraryError(
                    f"{path}: experiment '{experiment.name}' is already defined in {entries[experiment.name].module}"
                )
            entries[experiment.name] = LibraryEntry(experiment, plan, str(path))
        return cls(entries, directory)

    def __iter__(self) -> Iterator[Experiment]:
        return (entry.experiment for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> LibraryEntry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UnknownExperimentError(
                f"unknown experiment {quoted(name)}{did_you_mean(name, self._entries)} (known: {known})"
            ) from None

    def experiment(self, name: str) -> Experiment:
        return self.entry(name).experiment

    def plans(self) -> dict[str, Callable[..., Any]]:
        return {name: entry.plan for name, entry in self._entries.items()}

    def parameter_specs(self) -> list[ParameterSpec]:
        """Every declared parameter, once (experiments share the global ones)."""
        seen: dict[str, ParameterSpec] = {}
        for experiment in self:
            for spec in experiment.parameters:
                known = seen.get(spec.id)
                if known is not None and known != spec:
                    raise LibraryError(f"parameter '{spec.id}' is declared differently by two experiments")
                seen[spec.id] = spec
        return list(seen.values())


def _import(name: str, path: Path) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise LibraryError(f"{path}: cannot be loaded: {type(exc).__name__}: {exc}") from exc
