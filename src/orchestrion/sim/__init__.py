"""The simulated trapped-ion lab: physics and the devices that drive it."""

from ._devices import Execution, FieldMonitor, PolledReading, RFChannel, RFSynthesizer, Sequencer
from ._physics import IonTrap, IonTrapModel, ShotResults, rabi_excitation, simulated_ion_trap

__all__ = [
    "Execution",
    "FieldMonitor",
    "IonTrap",
    "IonTrapModel",
    "PolledReading",
    "RFChannel",
    "RFSynthesizer",
    "Sequencer",
    "ShotResults",
    "rabi_excitation",
    "simulated_ion_trap",
]
