"""The paper's algorithm: ScaleOT (Yao et al., AAAI 2025), and the baselines built the same way.

Stage 1, Dynamic LayerReplace (``layer_replace``): layer importance and harmonizers (``harmonizer``) learned
on public text; stage 2, emulator assembly (``assembly``): the least important middle blocks replaced by
their harmonizers, the kept ones compressed by Selective Rank Compression (``rank_compression``). The
baselines: Offsite-Tuning's uniform LayerDrop and its distillation (``distillation``), CRaSh's layer sharing
(``layer_sharing``) and our importance-drop. ``blocks`` holds the middle-block arithmetic all of them share,
``bundle`` what the model owner ships, ``fit`` the settings checked against the model before a build.
"""

from emulator.scaleot.assembly import Emulator, build_emulator, derive_emulator, stage1_twin
from emulator.scaleot.blocks import LayerEntry, adapter_layers
from emulator.scaleot.bundle import load_emulator, read_manifest, save_bundle
from emulator.scaleot.fit import check_fits

__all__ = [
    "Emulator",
    "LayerEntry",
    "adapter_layers",
    "build_emulator",
    "check_fits",
    "derive_emulator",
    "load_emulator",
    "read_manifest",
    "save_bundle",
    "stage1_twin",
]
