"""An interactive session: the lab, a RunEngine with the document pipeline, and helpers.

The session starts with whatever works: a device that cannot be built, a parameter
store that cannot be reached or a catalog that cannot be opened is reported, and the
rest is there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bluesky import RunEngine
from pydantic import SecretStr
from rich.console import Console

from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.devices import DeviceRegistry, DeviceState
from orchestrion.experiment import ExperimentLibrary
from orchestrion.lab import Lab
from orchestrion.pipeline import DocumentPipeline, RunSummary
from orchestrion.session import LabSession, Problem

from ._display import NOT_PLOTTED, ProgressDisplay, SummaryPrinter, check_display, print_run_summary
from ._params import ParameterBrowser

if TYPE_CHECKING:  # matplotlib comes with it: a second of start-up, paid when the table is made
    from bluesky.callbacks.best_effort import BestEffortCallback

__all__ = ["Problem", "ShellSession"]

logger = logging.getLogger(__name__)


@dataclass
class ShellSession:
    """Everything a user's namespace holds; built by `ShellSession.start`.

    The RunEngine, lab and pipeline are a lenient `LabSession`: what cannot be set up is
    listed in `problems` and the session starts with the rest.
    """

    config: OrchestrionConfig
    lab_session: LabSession
    console: Console
    params: ParameterBrowser | None = None
    table: BestEffortCallback | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    _catalog_connection: Any = None

    @classmethod
    def start(cls, config: OrchestrionConfig | None = None, console: Console | None = None) -> ShellSession:
        config = config or load_config()
        extras: dict[str, Any] = {}
        # With the stack up, the session writes to the stack's Tiled server: decide before
        # the pipeline is built.
        if _services_up(config):
            config = _with_stack_catalog(config)
        # The post-processing process starts first, held: its imports overlap the lab's (ADR 0810).
        lab_session = LabSession(config, lenient=True, early_pipeline=True)
        session = cls(config=config, lab_session=lab_session, console=console or Console())
        session.extras.update(extras)
        session._load()
        return session

    @property
    def RE(self) -> RunEngine:
        return self.lab_session.RE

    @property
    def library(self) -> ExperimentLibrary | None:
        return self.lab_session.library

    @property
    def devices(self) -> DeviceRegistry | None:
        return self.lab_session.devices

    @property
    def lab(self) -> Lab | None:
        return self.lab_session.lab

    @property
    def pipeline(self) -> DocumentPipeline | None:
        return self.lab_session.pipeline

    @property
    def problems(self) -> list[Problem]:
        return self.lab_session.problems

    def _attempt(self, part: str, action: Any) -> Any:
        return self.lab_session.attempt(part, action)

    def _load(self) -> None:
        self.lab_session.open()
        if self.lab_session.parameters is not None:
            self.params = ParameterBrowser(self.lab_session.parameters)
        if _services_up(self.config):
            self._connect_services()
        self._subscribe_display()
        self._open_catalog()

    def _connect_services(self) -> None:
        """Offer the stack's queue."""
        from orchestrion.client import Client

        client = self._attempt("queue", lambda: Client.local(self.config))
        if client is not None:
            self.extras.update({"client": client, "submit": client.submit, "jobs": client.jobs})

    def _open_catalog(self) -> None:
        from orchestrion.pipeline import connect_catalog

        connection = self._attempt("catalog", lambda: connect_catalog(self.config))
        if connection is None:
            return
        self._catalog_connection = connection
        catalog = _runs_catalog(connection.client)
        self.extras["catalog"] = catalog
        # databroker's v1 view, for users of older profiles: `db[-1].table()`.
        db = self._attempt("db (databroker v1 view)", lambda: catalog.v1)
        if db is not None:
            self.extras["db"] = db

    def _subscribe_display(self) -> None:
        from bluesky.callbacks.best_effort import BestEffortCallback

        self.table = BestEffortCallback()
        self.table.disable_baseline()
        self.table.noplot_streams = list(NOT_PLOTTED)
        display = check_display()
        if display.problem is not None:
            self.problems.append(Problem("live plots", display.problem))
        if display.framework is None:
            self.table.disable_plots()
        else:
            import matplotlib.pyplot as plt

            # Figures then appear as the callback makes them, and redraw as points arrive.
            plt.ion()
        self.lab_session.subscribe(self.table)
        progress = ProgressDisplay(self.console)
        self.lab_session.subscribe(progress)
        self.RE.state_hook = progress.on_state_change  # type: ignore[assignment]  # typed None upstream
        # After the pipeline: by 'stop' its writers have named the file and catalog node.
        self.lab_session.subscribe(SummaryPrinter(self.summary_of, lambda s: print_run_summary(s, self.console)))

    def summary_of(self, run_uid: str) -> RunSummary | None:
        """The run's summary once it is complete in the catalog, so `catalog[-1]` is it."""
        if self.pipeline is None:
            return None
        summary = self.pipeline.summaries.runs.get(run_uid)
        if summary is not None and not self.pipeline.wait_catalogued(run_uid):
            summary.tiled = None
        return summary

    def namespace(self) -> dict[str, Any]:
        """What the user's namespace gets: RE, the devices, the experiments as plans, params..."""
        names: dict[str, Any] = {"RE": self.RE, "session": self, "bec": self.table}
        if self.devices is not None:
            names.update(self.devices.namespace())
        if self.library is not None:
            names.update(self.library.plans())
        if self.lab is not None:
            names["lab"] = self.lab
        if self.params is not None:
            names["params"] = self.params
        names.update(self.extras)
        if "catalog" in self.extras:
            from tiled.queries import Key

            names["Key"] = Key  # catalog.search(Key("experiment") == "ramsey")
        return names

    def banner(self) -> str:
        lines = [f"Orchestrion session, home {self.config.home}"]
        if self.library is not None:
            lines.append(f"  experiments: {', '.join(self.library.names())}   run one: RE(spectroscopy())")
        if self.devices is not None:
            ready = [d.name for d in self.devices if d.state is DeviceState.CONNECTED]
            lines.append(f"  devices:     {', '.join(ready) or 'none'}")
        if self.params is not None:
            lines.append('  params:      params["qubit.frequency"], params.history(id), params.at(time)')
        descriptions = {
            "catalog": 'past runs: catalog[-1], catalog.search(Key("experiment") == "ramsey")',
            "db": "databroker's v1 view of the catalog: db[-1].table()",
            "submit": 'the queue: submit("ramsey", priority=5), jobs(), client',
        }
        for name, text in descriptions.items():
            if name in self.extras:
                lines.append(f"  {name + ':':12} {text}")
        if self.problems:
            lines.append("Not available:")
            lines.extend(f"  {p.part}: {p.message}" for p in self.problems)
        return "\n".join(lines)

    def close(self) -> None:
        client = self.extras.get("client")
        if client is not None:
            client.close()
        if self._catalog_connection is not None:
            self._catalog_connection.close()
        self.lab_session.close()


def _services_up(config: OrchestrionConfig) -> bool:
    """Whether `orchestrion up` runs the stack for this configuration."""
    from orchestrion.services import status

    try:
        return all(service.health == "ok" for service in status(config))
    except Exception:
        return False


def _with_stack_catalog(config: OrchestrionConfig) -> OrchestrionConfig:
    """``config`` pointed at the stack's Tiled server."""
    from orchestrion.services import tiled_api_key, tiled_uri

    key = tiled_api_key(config)
    return config.model_copy(update={"tiled_uri": tiled_uri(config), "tiled_api_key": SecretStr(key) if key else None})


def _runs_catalog(client: Any) -> Any:
    """The catalog's root with bluesky conveniences: `catalog[-1]`, `catalog[scan_id]`, `.v1`.

    TiledWriter writes runs at the root, which carries no 'CatalogOfBlueskyRuns' spec, so
    the client class is applied here rather than chosen by Tiled.
    """
    from bluesky_tiled_plugins import CatalogOfBlueskyRuns

    return CatalogOfBlueskyRuns(client.context, item=client.item, structure_clients=client.structure_clients)
