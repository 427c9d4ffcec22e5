"""The main job of `make demo`: calibrate the simulated qubit and measure it.

Runs the experiment library in-process, as `orchestrion run` does, and prints what
each experiment found.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console

from orchestrion.config import load_config
from orchestrion.errors import OrchestrionError
from orchestrion.experiment import RunRequest
from orchestrion.gui import open_catalog, write_run_figures
from orchestrion.session import EmbeddedSession
from orchestrion.shell import print_run_summary

DEMO_RUNS = (
    RunRequest(experiment="spectroscopy"),
    RunRequest(experiment="calibrate_frequency"),
    RunRequest(experiment="spectroscopy", scan=("spectroscopy.detuning=-60e3:60e3:25",), pattern="centred"),
    RunRequest(experiment="rabi_flop"),
    RunRequest(experiment="ramsey"),
)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        config = load_config()
        session = EmbeddedSession(config)
    except OrchestrionError as exc:
        console.print(f"error: {exc}")
        return 2
    console.print(f"Orchestrion demo: data under {config.home}\n")
    failed = 0
    uids: list[str] = []
    try:
        parameters = session.open().lab_parameters()
        before = float(parameters.get("qubit.frequency").value)
        for request in DEMO_RUNS:
            summary = session.run(request)
            print_run_summary(summary, console)
            if summary.tiled:
                uids.append(summary.run_uid)
            failed += summary.status != "success"
        after = float(parameters.get("qubit.frequency").value)
        true_now = session.devices.resource("ion").qubit_frequency()
        console.print(
            f"\nqubit.frequency: stored {before:.1f} Hz before calibration, {after:.1f} Hz after; "
            f"the simulated ion is at {true_now:.1f} Hz now ({after - true_now:+.1f} Hz off)."
        )
    finally:
        session.close()
    # Drawn as `orchestrion plot` and the GUI's data page draw them, from the catalog.
    connection = open_catalog(config)
    try:
        figures = write_run_figures(connection.client, uids, config.home / "figures")
    finally:
        connection.close()
    console.print("\nFigures, one per run:")
    for path in figures:
        console.print(f"  {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
