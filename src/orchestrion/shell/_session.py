"""An interactive session: the lab, a RunEngine with the document pipeline, and helpers.

The session starts with whatever works: a device that cannot be built, a parameter
store that cannot be reached or a catalog that cannot be opened is reported, and the
rest is there.  What the prompt does not need (the catalog, its v1 view, the live
table's matplotlib) is made in the background once the prompt is up (ADR 0821).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bluesky import RunEngine
from pydantic import SecretStr
from rich.console import Console

from orchestrion.config import OrchestrionConfig, load_config
from orchestrion.devices import DeviceRegistry, DeviceState
from orchestrion.experiment import ExperimentLibrary
from orchestrion.lab import Lab
from orchestrion.pipeline import DocumentPipeline, RunSummary
from orchestrion.session import LabSession, Problem

from ._deferred import Background, Deferred, PartUnavailable, Pending
from ._display import (
    NOT_PLOTTED,
    DisplayCheck,
    ProgressDisplay,
    SummaryPrinter,
    check_display,
    display_is_set,
    print_run_summary,
)
from ._params import ParameterBrowser

if TYPE_CHECKING:  # matplotlib comes with it: a second of imports, made after the prompt
    from bluesky.callbacks.best_effort import BestEffortCallback

__all__ = ["Problem", "ShellSession"]

logger = logging.getLogger(__name__)

CATALOG_CHECK_TIMEOUT = 1.0  # s: a Tiled server that does not accept a connection by then is reported


@dataclass
class ShellSession:
    """Everything a user's namespace holds; built by `ShellSession.start`.

    The RunEngine, lab and pipeline are a lenient `LabSession`: what cannot be set up is
    listed in `problems` and the session starts with the rest.  The live table (``bec``),
    ``catalog``, ``db`` and ``Key`` are made in the background (`start_background`); until
    then their names stand for them (`Pending`), and a use waits for them.
    """

    config: OrchestrionConfig
    lab_session: LabSession
    console: Console
    params: ParameterBrowser | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    _catalog_connection: Any = None
    _background: Background = field(init=False)
    _table: Deferred[BestEffortCallback] | None = None
    _display: DisplayCheck = field(default_factory=DisplayCheck)
    _plots_pending: bool = False
    _stand_ins: dict[str, tuple[Pending, Deferred[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._background = Background(report=lambda part, reason: self.problems.append(Problem(part, reason)))

    @classmethod
    def start(cls, config: OrchestrionConfig | None = None, console: Console | None = None) -> ShellSession:
        config = config or load_config()
        # With the stack up, the session writes to the stack's Tiled server: decide before
        # the pipeline is built.
        if _services_up(config):
            config = _with_stack_catalog(config)
        # The post-processing process starts first, held: its imports overlap the lab's (ADR 0810).
        lab_session = LabSession(config, lenient=True, early_pipeline=True)
        session = cls(config=config, lab_session=lab_session, console=console or Console())
        session._load()
        return session

    @property
    def table(self) -> BestEffortCallback | None:
        """bluesky's BestEffortCallback, the live table and plots (waits until it is made)."""
        if self._table is None:
            return None
        try:
            return self._table.value()
        except PartUnavailable:
            return None

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
        self._defer_catalog()

    def _defer(self, name: str, deferred: Deferred[Any]) -> None:
        """``name`` in the user's namespace is ``deferred``'s part, or stands for it until made."""
        self._stand_ins[name] = (Pending(deferred), deferred)

    def start_background(self) -> None:
        """Start making the deferred parts: called once the prompt is about to show, so
        their imports do not compete with the session's start for the one interpreter."""
        self._background.start()

    def _connect_services(self) -> None:
        """Offer the stack's queue."""
        from orchestrion.client import Client

        client = self._attempt("queue", lambda: Client.local(self.config))
        if client is not None:
            self.extras.update({"client": client, "submit": client.submit, "jobs": client.jobs})

    def _defer_catalog(self) -> None:
        """``catalog``, ``db`` and ``Key``, made in the background; one that can be seen not
        to open now (no server at the address, no directory for it) is in the banner."""
        catalog = self._background.defer("catalog", self._open_catalog)
        # databroker's v1 view, for users of older profiles: `db[-1].table()`.
        db = self._background.defer("db (databroker v1 view)", lambda: catalog.value().v1)
        key = self._background.defer("Key", _tiled_key)
        problem = _catalog_problem(self.config)
        if problem is not None:
            self.problems.append(Problem("catalog", problem))
            catalog.fail(problem)
        for name, deferred in (("catalog", catalog), ("db", db), ("Key", key)):
            self._defer(name, deferred)

    def _open_catalog(self) -> Any:
        from orchestrion.pipeline import connect_catalog

        connection = connect_catalog(self.config)
        self._catalog_connection = connection
        return _runs_catalog(connection.client)

    def _make_table(self, display: DisplayCheck) -> BestEffortCallback:
        """The live table, and its plots when the display can show them."""
        from bluesky.callbacks.best_effort import BestEffortCallback

        self._display = display
        if display.problem is not None:
            self.problems.append(Problem("live plots", display.problem))
        table = BestEffortCallback()
        table.disable_baseline()
        table.noplot_streams = list(NOT_PLOTTED)
        if display.framework is None:
            table.disable_plots()
        return table

    def _subscribe_display(self) -> None:
        if display_is_set() or os.environ.get("MPLBACKEND"):
            # With matplotlib's backend Qt, bluesky's callbacks make a Qt object when they
            # are made: the table is made in the main thread, at the first line typed
            # (`settle`, which waits for it so that a run the line starts is plotted);
            # matplotlib's imports and the display check come before, behind the prompt.
            plots = self._background.defer("live plots", _check_plots)
            self._table = self._background.defer(
                "live table", lambda: self._make_table(plots.value()), main_thread=True
            )
            self._plots_pending = True
        else:
            self._table = self._background.defer("live table", lambda: self._make_table(DisplayCheck()))
        self._defer("bec", self._table)
        self.lab_session.subscribe(_WhenMade(self._table))
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
        names: dict[str, Any] = {"RE": self.RE, "session": self}
        if self.devices is not None:
            names.update(self.devices.namespace())
        if self.library is not None:
            names.update(self.library.plans())
        if self.lab is not None:
            names["lab"] = self.lab
        if self.params is not None:
            names["params"] = self.params
        names.update(self.extras)
        # catalog.search(Key("experiment") == "ramsey"); each is itself once it is made.
        for name, (stand_in, deferred) in self._stand_ins.items():
            made = deferred.made()
            names[name] = stand_in if made is None else made
        return names

    def settle(self, user_ns: dict[str, Any]) -> None:
        """Before each cell (IPython's ``pre_run_cell``): the parts made by now replace their
        stand-ins in ``user_ns`` (unless the user has rebound the name).  With a display,
        the first cell waits for the live plots' set-up and turns on matplotlib's
        interactive mode here, in the main thread, where IPython's GUI integration must
        be set up."""
        if self._plots_pending:
            self._plots_pending = False
            self._start_plots()
        for name, (stand_in, deferred) in self._stand_ins.items():
            made = deferred.made()
            if made is not None and user_ns.get(name) is stand_in:
                user_ns[name] = made

    def _start_plots(self) -> None:
        assert self._table is not None
        try:
            self._table.value()  # made here, in the main thread
        except PartUnavailable as exc:
            print(f"Not available:\n  {exc.part}: {exc.reason}")
            return
        if self._display.problem is not None:
            print(f"Not available:\n  live plots: {self._display.problem}")
        if self._display.framework is not None:
            import matplotlib.pyplot as plt

            # Figures then appear as the callback makes them, and redraw as points arrive.
            plt.ion()

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
        failed = {name for name, (_, deferred) in self._stand_ins.items() if deferred.problem is not None}
        if "catalog" in failed:
            failed.add("db")
        for name, text in descriptions.items():
            if (name in self.extras or name in self._stand_ins) and name not in failed:
                lines.append(f"  {name + ':':12} {text}")
        if self.problems:
            lines.append("Not available:")
            lines.extend(f"  {p.part}: {p.message}" for p in self.problems)
        return "\n".join(lines)

    def close(self, timeout: float = 60.0) -> None:
        """Close what the session opened; a part still being made is waited for first
        (up to ``timeout`` s), so that its connection is closed too."""
        self._background.join(timeout)
        client = self.extras.get("client")
        if client is not None:
            client.close()
        if self._catalog_connection is not None:
            self._catalog_connection.close()
        self.lab_session.close()


class _WhenMade:
    """A document callback made in the background: each document waits for it to be made.

    If it could not be made the documents go nowhere, and the first one says why.
    """

    def __init__(self, deferred: Deferred[Any]) -> None:
        self._deferred = deferred
        self._said = False

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            callback = self._deferred.value()
        except PartUnavailable as exc:
            if not self._said:
                self._said = True
                logger.warning("%s", exc)
            return
        callback(name, doc)


def _catalog_problem(config: OrchestrionConfig) -> str | None:
    """Why the catalog cannot be opened, if that shows at once (None: try it).

    A server is asked for a connection only (a second at most); an embedded catalog gets
    its directory.  Anything else (a server that refuses the key, a damaged catalog file)
    shows when it is opened, in the background, and at the first use of ``catalog``.
    """
    if config.tiled_uri:
        address = urlsplit(config.tiled_uri)
        port = address.port or (443 if address.scheme == "https" else 80)
        try:
            with socket.create_connection((address.hostname or "localhost", port), timeout=CATALOG_CHECK_TIMEOUT):
                return None
        except OSError as exc:
            return f"no Tiled server answers at {config.tiled_uri} ({exc.strerror or exc})"
    from orchestrion.pipeline import embedded_catalog_paths

    files = embedded_catalog_paths(config.home)["files"]
    try:
        files.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the catalog's directory {files} ({exc.strerror or exc})"
    return None


def _check_plots() -> DisplayCheck:
    """Whether live plots can appear; matplotlib's pyplot imported meanwhile (in the
    background: the import makes no Qt object, the table made from it later does)."""
    import bluesky.callbacks.best_effort  # noqa: F401

    return check_display()


def _tiled_key() -> Any:
    from tiled.queries import Key

    return Key


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
