"""IPython configuration of the Orchestrion profile (`orchestrion shell`)."""

from orchestrion.config import load_config

c = get_config()  # type: ignore[name-defined]  # noqa: F821
# Command history belongs to the lab's home, not to the checkout's profile directory.
_history = load_config().home / "ipython" / "history.sqlite"
_history.parent.mkdir(parents=True, exist_ok=True)
c.HistoryManager.hist_file = str(_history)
c.TerminalIPythonApp.display_banner = False
c.InteractiveShell.confirm_exit = False
# One line per user error is printed by the session; %tb still shows the traceback.
c.InteractiveShell.xmode = "Context"
