"""The one configuration model: `$ORCHESTRION_HOME/config.yaml` under `ORCHESTRION_*` variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orchestrion._yaml import load_yaml
from orchestrion.errors import InputError

# The checkout this package was installed from (editable installs): its plans/ and
# devices/ are the defaults, so `orchestrion run` works from any directory.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


DETECTORS_SUBDIR = "detectors"  # under the data directory: the run files link their frames relatively


def _default_dir(name: str) -> Path:
    for candidate in (Path.cwd() / name, _SOURCE_ROOT / name):
        if candidate.is_dir():
            return candidate
    return Path.cwd() / name


class OrchestrionConfig(BaseSettings):
    """Everything an Orchestrion process needs to know, validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRION_", extra="forbid", validate_default=True)

    home: Path = Field(Path("var"), description="Where data, catalogs and local databases live")
    plans_dir: Path = Field(default_factory=lambda: _default_dir("plans"), description="The experiment library")
    devices_dir: Path = Field(default_factory=lambda: _default_dir("devices"), description="Device configuration")
    profile_dir: Path = Field(
        default_factory=lambda: _default_dir("profile"), description="IPython and queue-server startup"
    )

    sim_time_scale: float = Field(
        1.0, gt=0, description="Simulated hardware durations are multiplied by this (0.01 runs 100x faster)"
    )
    sim_seed: int | None = Field(None, description="Seed of the simulated lab's random numbers")

    preprocess_workers: int = Field(
        2, ge=1, le=64, description="Worker processes (or threads) compiling sequences ahead of the hardware"
    )
    preprocess_lookahead: int = Field(
        8, ge=0, le=10_000, description="How many points ahead of the hardware sequences are compiled (0: none)"
    )
    # Pre-processing (perf, ADR 0811, 0820): forked worker processes, so that a compiler
    # written in Python does not share the RunEngine's GIL; threads where fork is missing.
    preprocess_processes: bool = Field(
        True, description="Compile sequences in forked worker processes (false: in threads of the RunEngine's process)"
    )
    prepare_next_job: bool = Field(
        True,
        description="Prepare the next queued job's parameter snapshot and first sequences while a job runs "
        "(used only if nothing it read changed; ADR 0313)",
    )
    setpoint_retries: int = Field(3, ge=1, le=100, description="Attempts to reach a device set-point before failing")

    # Devices (`devices/`): how long each may take to connect, and what a failure means.
    device_connect_timeout: float = Field(
        10.0, gt=0, le=600, description="Seconds a device may take to connect, unless its entry sets 'timeout'"
    )
    devices_strict: bool = Field(
        False, description="Refuse to start when a device cannot connect (default: leave it out and list why)"
    )

    # Run limits (experiment runner): a request beyond one is refused at once, in one line.
    max_run_points: int = Field(1_000_000, ge=1, description="Most points one run may have (grid x repetitions)")
    max_run_memory_mb: float = Field(
        2000.0, gt=0, description="Most memory (MB) a run's readings may take, estimated from its points and shots"
    )
    max_run_duration: float = Field(
        7 * 86400.0, gt=0, description="Longest run (s), estimated from its pulse sequences: points x shots x length"
    )

    influx_url: str | None = Field(None, description="InfluxDB base URL; unset means the embedded SQLite store")
    influx_database: str = Field("orchestrion", description="InfluxDB database (bucket on 2.x/3.x)")
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    influx_token: SecretStr | None = Field(None, description="Token for InfluxDB 2.x/3.x v1-compatibility auth")
    influx_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds to wait for InfluxDB before reporting it unreachable"
    )

    # Services (`orchestrion up`): every server binds 127.0.0.1; only the ports vary.
    redis_port: int = Field(60379, ge=1, le=65535, description="Port of the stack's own redis-server (queue storage)")
    zmq_control_port: int = Field(60615, ge=1, le=65535, description="Queue server control (0MQ REQ/REP) port")
    zmq_info_port: int = Field(60625, ge=1, le=65535, description="Queue server console-output (0MQ PUB) port")
    tiled_port: int = Field(60800, ge=1, le=65535, description="Port of the stack's Tiled server")
    tiled_api_key: SecretStr | None = Field(
        None, description="API key of the stack's Tiled server; unset: `up` makes one, kept 0600 under run/"
    )
    queue_user_group: str = Field("primary", description="Queue-server user group that this user submits as")
    scheduler_poll_interval: float = Field(
        0.05, gt=0, le=10, description="How often the scheduler checks the queue server's status (s)"
    )
    # Jobs and services (jobs/, services/): what a fault does to a job, and the stack's keeper.
    job_fault_retries: int = Field(
        0, ge=0, le=10,
        description="Times a job cut short by a fault (its worker died, `down --force`) runs again; 0: failed",
    )  # fmt: skip

    # API server (the stack's one authenticated HTTP door; orchestrion.api).
    api_host: str = Field(
        "127.0.0.1", description="Interface the API server binds; another than loopback serves a lab network (use TLS)"
    )
    api_port: int = Field(60610, ge=1, le=65535, description="Port of the stack's API server")
    api_tls_certfile: Path | None = Field(None, description="TLS certificate (PEM) the API server presents; set both")
    api_tls_keyfile: Path | None = Field(None, description="TLS private key (PEM) of api_tls_certfile")
    api_max_body_bytes: int = Field(
        1_000_000, ge=1024, le=1_000_000_000, description="Largest request body the API server accepts (413 beyond)"
    )
    api_url: str | None = Field(
        None, description="API server clients talk to (unset: the local stack's, when it is up)"
    )
    api_key: SecretStr | None = Field(
        None, description="API key clients present (unset: the local stack's admin key under run/, if readable)"
    )

    # Document pipeline: bundler, HDF5 files under home/data, Tiled catalog.
    tiled_uri: str | None = Field(
        None, description="Tiled server runs are catalogued in (with tiled_api_key); unset: embedded catalog under home"
    )
    tiled_enabled: bool = Field(True, description="Catalogue runs in Tiled (false: HDF5 files only)")
    tiled_batch_size: int = Field(
        500, ge=1, le=100_000, description="Events TiledWriter collects per write (and at each stop)"
    )
    tiled_register_arrays: bool = Field(
        True,
        description="Arrays above 64 KiB a point are registered in the catalog from the run's HDF5 file, not "
                    "copied into it (false: copied; for a catalog server that cannot read data_dir)",
    )  # fmt: skip
    post_processing_niceness: int = Field(
        10, ge=0, le=19,
        description="Niceness of the post-processing process (bundler, HDF5, Tiled): the RunEngine comes first",
    )  # fmt: skip
    post_processing_standby: float = Field(
        600.0, ge=0, le=86_400,
        description="Seconds the post-processing process `orchestrion run` leaves behind, imported, waits for the "
                    "next run to adopt it (0: none)",
    )  # fmt: skip
    hdf5_buffer_points: int = Field(64, ge=1, le=100_000, description="Points buffered before an HDF5 write")
    hdf5_flush_interval: float = Field(
        1.0, gt=0, le=3600, description="Longest time (s) a point waits in the buffer for HDF5 readers"
    )
    detector_data_dir: Path | None = Field(
        None,
        description="Where file-writing detectors (ophyd-async StandardDetector) write their frames: the run's "
                    "file links them and the catalog may read them (relative: under home; unset: home/data/detectors)",
    )  # fmt: skip
    hdf5_file_prefix: str = Field(
        "{date}_scan{scan_id}_{experiment}_{uid8}",
        description="HDF5 file name template: date, scan_id, experiment, uid, uid8, start[KEY]",
    )

    # Document bus (orchestrion.bus): services mode publishes every document to Redis
    # Streams; post-processing workers (here or on other machines) write the runs.
    post_processing_workers: int = Field(
        2, ge=0, le=64,
        description="Post-processing workers `orchestrion up` starts (0: the queue-server worker does it itself)",
    )  # fmt: skip
    bus_redis_url: str | None = Field(
        None, description="Redis of the document bus; unset: the stack's own (redis://127.0.0.1:redis_port)"
    )
    bus_claim_idle: float = Field(
        5.0, gt=0, le=3600, description="Seconds without a worker's heartbeat before another worker takes its runs"
    )
    bus_retention: float = Field(
        60.0, ge=0, le=86_400 * 30,
        description="Seconds a finished run's documents stay on the bus for late live consumers",
    )  # fmt: skip
    bus_buffer_documents: int = Field(
        100_000, ge=100, le=10_000_000,
        description="Documents the RunEngine buffers while Redis is unreachable before it waits",
    )  # fmt: skip
    bus_connectors: list[str] = Field(
        default_factory=lambda: ["logbook"], description="Edge connectors (entry points) the workers run"
    )
    logbook_path: Path | None = Field(None, description="The logbook connector's file; unset: home/logbook.jsonl")
    tiled_catalog_uri: str | None = Field(
        None, description="Catalog database of the stack's Tiled server (postgresql://...); unset: SQLite under home"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file: a lab's config.yaml, a test's variable.
        return env_settings, init_settings

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def detectors_dir(self) -> Path:
        """Where detectors write their own files (`detector_data_dir`, under home when relative)."""
        return detectors_dir(self.home, self.detector_data_dir)


def detectors_dir(home: Path, configured: Path | None = None) -> Path:
    """The detectors' directory of ``home``: ``configured`` (under ``home`` when relative), else home/data/detectors."""
    if configured is None:
        return home / "data" / DETECTORS_SUBDIR
    return configured if configured.is_absolute() else home / configured


def load_config(**overrides: Any) -> OrchestrionConfig:
    """Read `$ORCHESTRION_HOME/config.yaml` (if any) and the environment.

    Unknown keys, in the file or as `ORCHESTRION_*` variables, are an error.
    """
    home = Path(overrides.get("home") or os.environ.get("ORCHESTRION_HOME") or "var")
    values: dict[str, Any] = {}
    config_file = home / "config.yaml"
    if config_file.is_file():
        loaded = load_yaml(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise InputError(f"{config_file}: expected a mapping of settings")
        values.update(loaded)
    unknown = sorted(
        name
        for name in os.environ
        if name.startswith("ORCHESTRION_") and name[len("ORCHESTRION_") :].lower() not in OrchestrionConfig.model_fields
    )
    if unknown:
        raise InputError(f"unknown setting in the environment: {unknown[0]}")
    values.update(overrides)
    values.setdefault("home", home)
    try:
        config = OrchestrionConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "configuration"
        raise InputError(f"configuration: {where}: {first['msg']}") from None
    return config.model_copy(update={"home": config.home.resolve()})
