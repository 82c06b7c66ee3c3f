"""Plug-in (Offsite-Tuning, kept by ScaleOT): trained adapters go back into the original, uncompressed model.

Weights are copied by original block index and parameter name; any key or shape mismatch is an error listing
them, never a silent skip (a known failure of earlier federated offsite-tuning code).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from emulator.config import AdapterConfig
from emulator.tuning.adapters import load_adapter_state_, prepare_adapter_


def plug_in_(
    full_model: nn.Module,
    state: Mapping[str, torch.Tensor],
    layers: Sequence[int],
    config: AdapterConfig,
) -> nn.Module:
    """Load adapter tensors into ``full_model`` in place and return it.

    Args:
        full_model: the model owner's original model.
        state: adapter tensors keyed ``"{original index}.{name in block}"``.
        layers: original indices of the adapter blocks.
        config: full or LoRA adapters (LoRA factors are injected into ``full_model`` if not there yet).

    Raises:
        ValueError: the keys or shapes of ``state`` do not match the adapter of ``full_model``.
    """
    positions = {i: i for i in layers}
    prepare_adapter_(full_model, positions, config)
    load_adapter_state_(full_model, positions, state)
    return full_model
