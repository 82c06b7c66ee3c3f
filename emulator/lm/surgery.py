"""Model-surgery helpers shared by stage 1, emulator assembly and distillation.

- ``frozen_view``: a structural copy of a model that shares its weight storage, with every parameter frozen.
  Stage 1 and distillation swap layer lists and run forward/backward on it, so the model owner's full model is
  never touched (not even its ``requires_grad`` flags), at no memory cost.
- ``shared_copy``: a block's module tree for another place in the layer list, its tensors those of the block
  (CRaSh's layer sharing): its own ``layer_idx``, so a KV cache keeps one slot per position.
- ``capture_blocks``: forward hooks recording what given blocks receive and return during one of the model's
  own forward passes (``output_hidden_states`` is no substitute: transformers 5 records hidden states by
  hooking the family's decoder-layer class, so a harmonizer in the layer list would be missed).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


def frozen_view(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree whose parameters alias ``model``'s storage and are frozen.

    Buffers and config are copied (they are small); tied parameters stay tied. Writing into the view's weights
    in place would write into ``model``'s: callers replace modules instead.
    """
    memo: dict[int, object] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in memo:
            memo[id(param)] = nn.Parameter(param.detach(), requires_grad=False)
    return copy.deepcopy(model, memo)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied ones counted once)."""
    return sum(p.numel() for p in model.parameters())


def shared_copy(block: nn.Module, position: int) -> nn.Module:
    """``block`` for ``position`` of the layer list, sharing every parameter and buffer with ``block``.

    The copy is a module of its own (the same module twice in a layer list would hold one ``layer_idx``, so
    two positions would write one KV-cache slot, and per-block wrappers such as activation checkpointing
    would wrap it twice), but its tensors are ``block``'s: no memory is spent, an emulator counts and saves
    them once, and an in-place change of ``block``'s weights is seen by the copy. Every non-tensor attribute
    (attention type, sliding window, rope flag) is ``block``'s; only ``layer_idx`` is ``position``.
    """
    memo: dict[int, object] = {id(t): t for t in (*block.parameters(), *block.buffers())}
    # The model's config, which attention reads at call time (its implementation), stays one object too.
    memo |= {id(m.config): m.config for m in block.modules() if getattr(m, "config", None) is not None}
    copy_ = copy.deepcopy(block, memo)
    reindex_attention_(copy_, position)
    return copy_


def reindex_attention_(block: nn.Module, position: int) -> None:
    """Point every ``layer_idx`` inside ``block`` at its new position, so KV caches follow the new list."""
    for module in block.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = position


@dataclass
class BlockRecord:
    """What blocks received and returned in one forward pass, by position in the layer list."""

    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> (B, T, d)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> (B, T, d)
    # position -> the call's other arguments (mask, position embeddings, ...), to call a block again
    arguments: dict[int, tuple[tuple, dict]] = field(default_factory=dict)

    def call(self, block: nn.Module, like: int, hidden: torch.Tensor) -> torch.Tensor:
        """``block`` applied to ``hidden`` with the other arguments the block at ``like`` received.

        Needs ``capture_blocks(..., arguments=True)``. Returns (B, T, d), the block's hidden-state output.
        """
        args, kwargs = self.arguments[like]
        output = block(hidden, *args, **kwargs)
        return output[0] if isinstance(output, tuple) else output


@contextmanager
def capture_blocks(
    layers: nn.ModuleList,
    positions: Iterable[int],
    inputs: bool = True,
    outputs: bool = True,
    arguments: bool = False,
) -> Iterator[BlockRecord]:
    """Record the hidden states entering and/or leaving the blocks at ``positions`` while the context is open.

    Tensors are recorded as produced (with their autograd history, if any); hooks are removed on exit.
    ``arguments`` also records each call's other arguments (``BlockRecord.call`` replays them).
    """
    record = BlockRecord()
    handles = []
    for position in positions:
        block = layers[position]
        if inputs or arguments:
            hook = _input_hook(record, position, inputs, arguments)
            handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
        if outputs:
            handles.append(block.register_forward_hook(_output_hook(record, position)))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def _input_hook(record: BlockRecord, position: int, inputs: bool, arguments: bool):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if inputs:
            record.inputs[position] = args[0] if args else kwargs["hidden_states"]
        if arguments:
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            record.arguments[position] = (tuple(args[1:]), rest)

    return hook


def _output_hook(record: BlockRecord, position: int):
    def hook(module: nn.Module, args: tuple, output: object) -> None:
        record.outputs[position] = output[0] if isinstance(output, tuple) else output

    return hook


def lm_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on (B, T) token blocks, through the model's own forward."""
    return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
