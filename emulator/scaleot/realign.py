"""Re-alignment between rounds: the emulator's harmonizers pulled toward the full model, adapters in place.

Paper (FedBiOT, Wu et al., KDD 2024): between federated rounds the server re-aligns the emulator to the full
model with the current global adapters in place, so the emulator the clients train on next keeps matching
the model their adapters will be plugged into, as the adapters drift away from the ones the emulator was
built around. FedBiOT distils the emulator's compressed layers on public data for a few steps each round.

Ours (ScaleOT's emulator, issue 21): only the harmonizers train (the kept middle blocks, the adapters, the
embeddings and the head stay as they are), with AdamW for ``steps`` steps, fresh every round, on the public
corpus stage 1 trained on; the loss is stage 1's ``hidden`` loss: the normalised MSE (per token) between the
hidden state leaving the emulator's middle and the one leaving the full model's. Both models carry the same
bottom adapter (the caller plugs it in), so both middles see the same input. The loss before and after is
measured on one held-out batch of public blocks, drawn first and left out of that round's training.

The harmonizer tensors are keyed ``"{original block index}.{name in the harmonizer}"`` (``"5.down.weight"``),
as adapter tensors are, so the same key set describes them on the server's emulator and on a client's copy
of the bundle.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from emulator.data.corpus import public_batches
from emulator.lm.architectures import get_layers
from emulator.scaleot.blocks import LayerEntry
from emulator.scaleot.distillation import middle_gap
from emulator.scaleot.harmonizer import Harmonizer
from emulator.scaleot.layer_sharing import SharedBlockHarmonizer

log = logging.getLogger(__name__)

HarmonizerState = dict[str, torch.Tensor]


@dataclass
class RealignResult:
    """What one re-alignment did.

    Attributes:
        state: the harmonizer tensors after it (fp32 CPU copies, keyed as ``harmonizer_state``).
        loss_before, loss_after: the hidden-state normalised MSE on the held-out batch before the first step
            and after the last.
        steps: optimiser steps taken.
        seconds: wall time.
    """

    state: HarmonizerState
    loss_before: float
    loss_after: float
    steps: int
    seconds: float


def harmonizer_modules(model: nn.Module, layer_map: Sequence[LayerEntry]) -> dict[int, Harmonizer]:
    """Original block index -> its harmonizer in ``model`` (the one after its shared block, if any)."""
    layers = get_layers(model)
    found = {}
    for entry in layer_map:
        if entry.kind in ("harmonizer", "shared+harmonizer") and entry.position is not None:
            module = layers[entry.position]
            found[entry.original] = module.harmonizer if isinstance(module, SharedBlockHarmonizer) else module
    return found


def _harmonizer_parameters(model: nn.Module, layer_map: Sequence[LayerEntry]) -> dict[str, nn.Parameter]:
    """The harmonizers' parameters of ``model``, keyed ``"{original index}.{name}"``, by original index."""
    return {
        f"{original}.{name}": param
        for original, module in sorted(harmonizer_modules(model, layer_map).items())
        for name, param in module.named_parameters()
    }


def harmonizer_state(model: nn.Module, layer_map: Sequence[LayerEntry]) -> HarmonizerState:
    """The harmonizer tensors of ``model``, keyed ``"{original index}.{name}"``, as fp32 CPU copies."""
    return {
        key: param.detach().to("cpu", torch.float32).clone()
        for key, param in _harmonizer_parameters(model, layer_map).items()
    }


def load_harmonizer_state_(
    model: nn.Module, layer_map: Sequence[LayerEntry], state: Mapping[str, torch.Tensor]
) -> None:
    """Copy ``state`` into the harmonizers of ``model``, in place.

    Raises:
        ValueError: the keys or shapes of ``state`` differ from the model's harmonizers; the message lists
            them (a model without harmonizers accepts only an empty state).
    """
    targets = _harmonizer_parameters(model, layer_map)
    missing, unexpected = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
    shapes = [
        f"{k}: got {tuple(state[k].shape)}, expected {tuple(targets[k].shape)}"
        for k in sorted(set(state) & set(targets))
        if tuple(state[k].shape) != tuple(targets[k].shape)
    ]
    problems = [
        f"{what} {items[:6]}{' …' if len(items) > 6 else ''}"
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes", shapes))
        if items
    ]
    if problems:
        raise ValueError("harmonizer state does not match the emulator's harmonizers: " + "; ".join(problems))
    with torch.no_grad():
        for key, param in targets.items():
            param.copy_(state[key].to(param.device, param.dtype))


def realign_(
    emulator_model: nn.Module,
    full_model: nn.Module,
    layer_map: Sequence[LayerEntry],
    blocks: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
) -> RealignResult:
    """Train the emulator's harmonizers, in place, so its middle's output matches the full model's.

    Both models must already carry the current adapters (full or LoRA) at their adapter blocks; nothing but
    the harmonizers changes, and every ``requires_grad`` flag is as it was on return.

    Args:
        emulator_model: the emulator (its harmonizers are trained).
        full_model: the full model, read only.
        layer_map: the emulator's layer map (``Emulator.layer_map``): where the harmonizers and the last
            middle block stand.
        blocks: (N, T) public token blocks (``emulator.data.corpus.public_blocks``).
        steps: AdamW steps (>= 1).
        lr: AdamW learning rate.
        batch_size: blocks per step (and in the held-out batch).
        seed: seeds the batch order (the caller varies it per round).

    Returns:
        The new harmonizer tensors and the loss before and after.

    Raises:
        ValueError: ``steps`` < 1, or the emulator has no harmonizer.
    """
    modules = harmonizer_modules(emulator_model, layer_map)
    if steps < 1 or not modules:
        raise ValueError(
            f"realign steps={steps} must be >= 1 on an emulator with harmonizers ({len(modules)})"
        )
    start = time.perf_counter()
    # The last middle block with a place: its output enters the top adapter (a harmonizer method gives every
    # middle block one, its original or its harmonizer).
    last = max(
        (e for e in layer_map if e.kind != "adapter" and e.position is not None), key=lambda e: e.original
    )
    # The normalised MSE per token between the hidden states leaving the two middles.
    gap = functools.partial(
        middle_gap, emulator_model, full_model, last.position, last.original, norm="token"
    )
    device = next(emulator_model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(blocks), generator=generator)
    size = min(batch_size, len(blocks) - 1)  # at least one block left to train on
    held_out = blocks[order[:size]].to(device)  # (B, T), never trained on this round
    train = blocks[order[size:]]
    batches: Iterator[torch.Tensor] = (b.to(device) for b in public_batches(train, batch_size, generator))
    flags = {p: p.requires_grad for p in emulator_model.parameters()}
    params = [p for module in modules.values() for p in module.parameters()]
    try:
        emulator_model.requires_grad_(False)
        with torch.no_grad():
            before = float(gap(held_out))
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        for _ in range(steps):
            loss = gap(next(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            after = float(gap(held_out))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    seconds = time.perf_counter() - start
    log.info("re-alignment: %d steps, hidden-state gap %.4f -> %.4f (%.1f s)", steps, before, after, seconds)
    return RealignResult(harmonizer_state(emulator_model, layer_map), before, after, steps, seconds)
