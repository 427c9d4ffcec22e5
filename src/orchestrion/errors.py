"""Errors that users see: each carries one line that names the problem."""


class OrchestrionError(Exception):
    """Base of the errors Orchestrion reports to users as one clear line."""


class InputError(OrchestrionError, ValueError):
    """Bad input from a user (experiment, parameter, scan spec, sequence): nothing was done."""


class UnknownExperimentError(InputError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ParameterError(InputError):
    """An unknown parameter id or a value that breaks the parameter's declaration."""


class ScanSpecError(InputError):
    """A scan specification that cannot be expanded."""


class DeviceConfigError(OrchestrionError):
    """A device that cannot be built from its configuration entry."""


class DeviceError(OrchestrionError):
    """A device that misbehaved during a run (for example a failed read-back check)."""


class DeviceConnectionError(OrchestrionError):
    """Devices that could not connect, where the lab is set to refuse to start without them."""
