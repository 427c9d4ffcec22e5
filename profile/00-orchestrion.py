"""Queue-server startup: the RunEngine, the lab's devices and plans, the document pipeline.

Kept thin on purpose: everything is built by `orchestrion.worker.populate`, which is
tested.  The configuration comes from `ORCHESTRION_*` variables that `orchestrion up`
passes to the queue server.
"""

from orchestrion.worker import populate

_environment = populate(globals())
del populate
