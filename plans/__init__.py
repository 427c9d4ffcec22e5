"""The experiment library.

Each public module defines one experiment: ``EXPERIMENT`` (its parameters, default
scan and sequence compiler) and a bluesky plan of the same name that the CLI, IPython
sessions and the queue server run.  Modules starting with '_' hold shared pieces.
"""
