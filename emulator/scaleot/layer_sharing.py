"""Layer sharing (CRaSh, Zhang et al., EMNLP 2023): a removed block's place filled by a copy of a kept one.

Paper: CRaSh ("Clustering, Removing, and Sharing") drops layers as uniform LayerDrop does and fills each
removed layer with its nearest kept layer; on OPT-1.3B this lifts plug-in from 46.5 to 48.4 (46.2 without
sharing) at no training cost, and raises the emulator's own zero-shot (less model privacy).

What we build on it:
- ``crash``: the blocks uniform LayerDrop removes at the same α, each place filled by a copy of its nearest
  kept middle block, no harmonizer. Nearest by index distance, ties to the later (upper) block, as CRaSh's
  released code chooses; adapters are never copied (CRaSh's "repeat non-trainable" variant): a copy of a
  trained block would be a second version of the adapter inside the frozen middle.
- ``share_replaced`` (ours): ScaleOT's replaced blocks get the same copy, followed by their harmonizer
  (``SharedBlockHarmonizer``), which stage 1 trains as the copy's correction
  (``emulator.scaleot.layer_replace``).

A copy is its own module whose tensors are its source's (``surgery.shared_copy``): its own ``layer_idx``, so
a KV cache keeps one slot per position, while the emulator holds, counts and ships the weights once (the
bundle stores them once and ``share_blocks_`` ties them again on load). It runs as its source does: the
per-layer config at its place (attention type, rope flag) is the source's, as are its attention attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from emulator.config import EmulatorConfig
from emulator.lm.architectures import get_layers
from emulator.lm.surgery import shared_copy
from emulator.scaleot.blocks import LayerEntry
from emulator.scaleot.harmonizer import Harmonizer


class SharedBlockHarmonizer(nn.Module):
    """A shared block followed by the harmonizer correcting it (``share_replaced``).

    Called like a decoder layer: ``block`` (a copy of the nearest kept block) gets every argument, the
    harmonizer maps its output toward what the replaced block would have given. With an identity harmonizer
    (zero ``W_up``, as initialised) it is CRaSh's shared block alone.

    Args:
        block: the shared decoder block.
        harmonizer: the replaced block's harmonizer.
    """

    def __init__(self, block: nn.Module, harmonizer: Harmonizer) -> None:
        super().__init__()
        self.block = block
        self.harmonizer = harmonizer

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """(B, T, d) -> (B, T, d): the block with all its arguments (transformers-5 decoder layers return a
        tensor), then the harmonizer."""
        return self.harmonizer(self.block(hidden_states, *args, **kwargs))


def share_sources(removed: Sequence[int], kept: Sequence[int]) -> dict[int, int]:
    """For each removed block, the kept block whose copy fills its place: the nearest, ties to the later one.

    Args:
        removed: original indices of the blocks to fill.
        kept: original indices of the blocks that may be copied (middle blocks only).

    Returns:
        ``{removed index: kept index}``.

    Raises:
        ValueError: blocks are removed but none is kept.
    """
    if removed and not kept:
        raise ValueError(
            f"layer sharing needs a kept middle block to copy, but all of {list(removed)} are removed; "
            "lower emulator.alpha"
        )
    return {i: min(kept, key=lambda k: (abs(k - i), k < i)) for i in removed}


def share_plan(
    config: EmulatorConfig, middle: list[int], kept: list[int], replaced: list[int]
) -> dict[int, int]:
    """The sharing an emulator build does: removed block -> source block (empty without sharing).

    Args:
        config: the emulator settings (``crash``, or ``scaleot`` with ``share_replaced``).
        middle: original indices of the middle blocks.
        kept: the middle blocks the method keeps as they are (``crash``: uniform LayerDrop's).
        replaced: the blocks ScaleOT gives to harmonizers.

    Raises:
        ValueError: sharing is asked for but no middle block is kept.
    """
    if config.traits.shares:
        return share_sources([i for i in middle if i not in kept], kept)
    if config.share_replaced:
        return share_sources(replaced, [i for i in middle if i not in replaced])
    return {}


def share_blocks_(model: nn.Module, layer_map: Sequence[LayerEntry]) -> None:
    """(Re)make every shared block of ``model`` from its source block as it now stands, in place.

    Emulator assembly calls it after SRC, so that a copy is its source as shipped (compressed where the source
    is) and never keeps weights its source no longer has; the bundle loader calls it to tie the copies again.
    A ``shared+harmonizer`` place keeps its harmonizer.
    """
    layers = get_layers(model)
    position = {e.original: e.position for e in layer_map if e.position is not None}
    for entry in layer_map:
        if entry.source is None:
            continue
        block = shared_copy(layers[position[entry.source]], entry.position)
        if entry.kind == "shared+harmonizer":
            block = SharedBlockHarmonizer(block, layers[entry.position].harmonizer)
        layers[entry.position] = block
