"""What a listing command imports: not the stacks it does not use (issue 16, ADR 0813).

Each command runs in a fresh interpreter, as the console script runs it, and reports the
modules loaded when it exits; a package `__init__` or a module-level import that pulls
bluesky back into a listing fails here instead of only slowing it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The command's own output goes to a file; the modules loaded at exit go on stdout.
RUNNER = """
import atexit, json, os, sys
out = open(os.environ["LISTING_OUTPUT"], "w")
sys.stdout = out
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.__stdout__))
from orchestrion.cli import main
sys.argv = ["orchestrion", *sys.argv[1:]]
main()
"""
HEAVY = ("bluesky", "ophyd", "ophyd_async", "tiled", "event_model", "lmfit", "scipy", "httpx", "matplotlib", "IPython")


def loaded_modules(tmp_path: Path, *args: str) -> tuple[set[str], str]:
    env = os.environ | {
        "ORCHESTRION_HOME": str(tmp_path / "home"),
        "LISTING_OUTPUT": str(tmp_path / "output"),
        "ORCHESTRION_SIM_TIME_SCALE": "0.02",
    }
    env.pop("ORCHESTRION_API_URL", None)  # the listing reads its stores here, not through an API server
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout)), (tmp_path / "output").read_text()


def top_level(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in packages}


@pytest.mark.parametrize("args", [["experiments"], ["params", "list"], ["jobs"]], ids=" ".join)
def test_a_listing_imports_no_bluesky_tiled_or_fits(tmp_path: Path, args: list[str]) -> None:
    modules, output = loaded_modules(tmp_path, *args)
    assert output.strip(), "the listing printed nothing"
    assert top_level(modules, HEAVY) == set()


def test_the_experiment_listing_does_not_import_the_runner(tmp_path: Path) -> None:
    modules, output = loaded_modules(tmp_path, "experiments")
    assert "spectroscopy:" in output
    assert "orchestrion.experiment._runner" not in modules  # what a run needs, not its declaration
    assert "orchestrion.pipeline" not in modules


def test_the_device_listing_builds_no_run_engine(tmp_path: Path) -> None:
    """It connects the devices (their real state) but imports neither ophyd 1.x nor a library."""
    modules, output = loaded_modules(tmp_path, "devices")
    assert "orchestrion.sim.Sequencer" in output
    assert top_level(modules, ("ophyd", "tiled", "lmfit", "scipy", "matplotlib", "IPython")) == set()
    assert "orchestrion.session" not in modules
    assert "orchestrion_plans" not in modules


@pytest.mark.parametrize(
    "package", ["experiment", "parameters", "devices", "analysis", "jobs", "services", "shell", "pipeline"]
)
def test_lazy_exports_are_the_modules_own_objects(package: str) -> None:
    """Every name a package exports lazily resolves, to the object its module defines."""
    import importlib

    module = importlib.import_module(f"orchestrion.{package}")
    exports: dict[str, tuple[str, ...]] = module._EXPORTS
    lazy = {name for names in exports.values() for name in names}
    eager = set(module.__all__) - lazy
    assert all(name in vars(module) for name in eager), "an exported name is neither eager nor lazy"
    for submodule, names in exports.items():
        defining = importlib.import_module(submodule, module.__name__)
        for name in names:
            assert getattr(module, name) is getattr(defining, name)
    assert lazy <= set(dir(module))
    with pytest.raises(AttributeError):
        _ = module.no_such_name
