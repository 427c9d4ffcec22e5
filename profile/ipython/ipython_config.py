"""IPython configuration of the Orchestrion profile (`orchestrion shell`)."""

c = get_config()  # type: ignore[name-defined]  # noqa: F821
c.TerminalIPythonApp.display_banner = False
c.InteractiveShell.confirm_exit = False
# One line per user error is printed by the session; %tb still shows the traceback.
c.InteractiveShell.xmode = "Context"
