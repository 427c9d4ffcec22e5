"""IPython start-up: the Orchestrion session (all logic in the tested `orchestrion.shell`)."""

from orchestrion.shell import load_ipython_session

_session = load_ipython_session(get_ipython())  # type: ignore[name-defined]  # noqa: F821
