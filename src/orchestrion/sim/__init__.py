"""The simulated trapped-ion lab: physics and the devices that drive it."""

from ._devices import Execution, FieldMonitor, RFChannel, RFSynthesizer, Sequencer
from ._physics import IonTrap, IonTrapModel, ShotResults, rabi_excitation

__all__ = [
    "Execution",
    "FieldMonitor",
    "IonTrap",
    "IonTrapModel",
    "RFChannel",
    "RFSynthesizer",
    "Sequencer",
    "ShotResults",
    "rabi_excitation",
]
