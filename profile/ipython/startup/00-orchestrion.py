"""IPython start-up: the Orchestrion session (all logic in the tested `orchestrion.shell`)."""

# The guard matters: helper processes started with multiprocessing's "spawn" re-run the
# main script as "__mp_main__", and must not start a second session.
if __name__ == "__main__":
    from orchestrion.shell import load_ipython_session

    _session = load_ipython_session(get_ipython())  # type: ignore[name-defined]  # noqa: F821
