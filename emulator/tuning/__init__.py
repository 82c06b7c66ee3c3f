"""The data owner's side (Offsite-Tuning's, kept by ScaleOT): the adapter blocks (full or LoRA), the local
training loop on the emulator, its peak memory, plug-in into the full model, and export of the result.
"""

from emulator.tuning.adapters import AdapterState, adapter_state, load_adapter_state_, prepare_adapter_
from emulator.tuning.export import export_plug_in
from emulator.tuning.memory import PeakMemory, current_rss
from emulator.tuning.plug_in import plug_in_
from emulator.tuning.training import TrainResult, client_seed, train_adapter

__all__ = [
    "AdapterState",
    "PeakMemory",
    "TrainResult",
    "adapter_state",
    "client_seed",
    "current_rss",
    "export_plug_in",
    "load_adapter_state_",
    "plug_in_",
    "prepare_adapter_",
    "train_adapter",
]
