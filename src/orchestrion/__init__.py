"""Orchestrion: experiment orchestration for trapped-ion and beamline labs, on Bluesky."""

from typing import Any


def __getattr__(name: str) -> Any:
    # The installed distribution's version, looked up when first asked for: the lookup
    # (importlib.metadata and a scan of sys.path) is tens of milliseconds that every
    # command paid at its first `import orchestrion...` (ADR 0813).
    if name != "__version__":
        raise AttributeError(f"module 'orchestrion' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("orchestrion")
    except PackageNotFoundError:  # running from a source tree that was not installed
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found
