"""Orchestrion: experiment orchestration for trapped-ion and beamline labs, on Bluesky."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("orchestrion")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
