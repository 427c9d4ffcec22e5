"""Every experiment's file read by tools nobody on the project wrote: nexusformat's
validator and Debian's HDF5 tools."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from orchestrion.config import OrchestrionConfig
from orchestrion.experiment import RunRequest
from orchestrion.session import EmbeddedSession

NXCHECK = Path(sys.executable).with_name("nxcheck")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per experiment of the library (default scans, short), and a grid scan."""
    home = tmp_path_factory.mktemp("home")
    config = OrchestrionConfig(home=home, tiled_enabled=False, sim_time_scale=0.02, sim_seed=1234)  # type: ignore[call-arg]
    session = EmbeddedSession(config)
    written: dict[str, Path] = {}
    try:
        for experiment in session.library:
            summary = session.run(RunRequest(experiment=experiment.name, shots=20))
            assert summary.status == "success", summary.reason
            assert summary.hdf5 is not None
            written[experiment.name] = Path(summary.hdf5)
        grid = session.run(
            RunRequest(
                experiment="spectroscopy",
                shots=10,
                scan=("spectroscopy.detuning=-5e4:5e4:4", "rf.frequency=199.99e6:200.01e6:3"),
            )
        )
        assert grid.hdf5 is not None
        written["grid"] = Path(grid.hdf5)
    finally:
        session.close()
    return written


def test_every_experiments_file_is_valid_nexus(files: dict[str, Path]) -> None:
    for experiment, path in files.items():
        checked = subprocess.run([str(NXCHECK), str(path)], capture_output=True, text=True, timeout=120, check=False)
        text = re.sub(r"\x1b\[[0-9;]*m", "", checked.stdout + checked.stderr)
        assert "Total number of errors: 0" in text, f"{experiment}: {text[-3000:]}"
        with h5py.File(path, "r") as f:
            missing_class: list[str] = []
            bad_names: list[str] = []

            def visit(
                name: str,
                item: h5py.Group | h5py.Dataset,
                bad_names: list[str] = bad_names,
                missing_class: list[str] = missing_class,
            ) -> None:
                if not NAME.match(name.rsplit("/", 1)[-1]):
                    bad_names.append(name)
                if isinstance(item, h5py.Group) and "NX_class" not in item.attrs:
                    missing_class.append(name)
                if isinstance(item, h5py.Dataset) and name.startswith("entry/instrument") and item.dtype.kind in "OS":
                    assert b"soft://" not in bytes(str(item[()]), "utf-8"), name

            f.visititems(visit)
            assert bad_names == [], experiment
            assert missing_class == [], experiment
            entry = f["entry"]
            assert entry["definition"][()] == b"NXscan"
            # Original ids kept beside their NeXus names; units on parameter values.
            ids = {g.attrs["id"]: g for g in entry["parameters"].values()}
            assert all(NAME.match(name) for name in entry["parameters"])
            name = entry["experiment"][()].decode()
            own = [pid for pid in ids if pid.startswith(f"{name}.")]
            assert own, experiment
            assert any("units" in ids[pid]["value"].attrs for pid in own), experiment


def test_a_grid_scan_names_every_axis_of_its_default_plot(files: dict[str, Path]) -> None:
    with h5py.File(files["grid"], "r") as f:
        data = f["entry/data"]
        # One axis per dimension in @axes (the outer one), and every axis indexing it.
        assert [str(a) for a in data.attrs["axes"]] == ["point_spectroscopy_detuning"]
        axes = [str(a) for a in data.attrs["scan_axes"]]
        assert len(axes) == 2
        for axis in axes:
            assert data.attrs[f"{axis}_indices"] == 0
            assert data[axis].shape == (12,)


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="Debian's hdf5-tools are not installed (make system-deps)")
def test_debians_hdf5_tools_read_every_file(files: dict[str, Path]) -> None:
    for experiment, path in files.items():
        dump = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True, timeout=120, check=False)
        assert dump.returncode == 0, f"{experiment}: {dump.stderr[-2000:]}"
        assert "error" not in dump.stderr.lower()
        listing = subprocess.run(["h5ls", "-r", str(path)], capture_output=True, text=True, timeout=120, check=False)
        assert listing.returncode == 0, f"{experiment}: {listing.stderr[-2000:]}"
        assert "*ERROR*" not in listing.stdout
        assert "/entry/data/point_index" in listing.stdout


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="Debian's hdf5-tools are not installed (make system-deps)")
def test_hdf5_tools_show_the_status_as_the_word_it_is(files: dict[str, Path]) -> None:
    for experiment, path in files.items():
        dump = subprocess.run(["h5dump", "-d", "/entry/status", str(path)], capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert dump.returncode == 0, f"{experiment}: {dump.stderr[-2000:]}"
        assert '(0): "success"' in dump.stdout, dump.stdout
        assert "\\000" not in dump.stdout
