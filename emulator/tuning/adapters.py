"""Adapters: the few decoder blocks a data owner trains (Offsite-Tuning's "sandwich", kept by ScaleOT).

The adapter is the bottom ``bottom`` and top ``top`` blocks of the model (paper: 2 + 2; which blocks those
are is the algorithm's ``emulator.scaleot.blocks.adapter_layers``, as the emulator is built around them),
trained either in full (Offsite-Tuning's default) or with LoRA on those blocks only. Adapter tensors are keyed
by the block's index in the **original** model plus the parameter name inside the block
(``"28.mlp.up_proj.weight"``), so the same key set describes the adapter on the emulator and on the full
model, and plug-in is a strict copy by key.

Adapters are chosen structurally, by block position; LoRA is injected into those blocks alone with peft, so
the model stays an ordinary transformers model with no wrapper class.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from emulator.config import AdapterConfig
from emulator.lm.architectures import get_layers

AdapterState = dict[str, torch.Tensor]


def prepare_adapter_(model: nn.Module, positions: Mapping[int, int], config: AdapterConfig) -> None:
    """Freeze ``model`` except its adapter, in place.

    Args:
        model: a causal LM (full model or emulator).
        positions: original block index -> position of that block in ``model``'s layer list.
        config: full or LoRA training.
    """
    model.requires_grad_(False)
    layers = get_layers(model)
    for position in positions.values():
        block = layers[position]
        if config.mode == "full":
            block.requires_grad_(True)
            continue
        if not _has_lora(block):
            inject_adapter_in_model(lora_config(config, block), block)
        for name, param in block.named_parameters():
            param.requires_grad_("lora_" in name)


def lora_config(config: AdapterConfig, block: nn.Module, **extra: object) -> LoraConfig:
    """peft's ``LoraConfig`` for LoRA on every linear layer of ``block``.

    ``extra``: further LoraConfig fields, e.g. ``layers_to_transform`` when it is applied to a whole model.
    """
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_linear_names(block),
        **extra,
    )


def adapter_state(model: nn.Module, positions: Mapping[int, int]) -> AdapterState:
    """The trainable adapter tensors, keyed ``"{original index}.{name in block}"``, as fp32 CPU copies."""
    layers = get_layers(model)
    state: AdapterState = {}
    for original, position in sorted(positions.items()):
        for name, param in layers[position].named_parameters():
            if param.requires_grad:
                state[f"{original}.{name}"] = param.detach().to("cpu", torch.float32).clone()
    return state


def load_adapter_state_(
    model: nn.Module, positions: Mapping[int, int], state: Mapping[str, torch.Tensor]
) -> None:
    """Copy ``state`` into the adapter blocks of ``model``, in place.

    Raises:
        ValueError: the keys or shapes of ``state`` differ from the model's adapter; the message lists them.
    """
    layers = get_layers(model)
    targets: dict[str, torch.Tensor] = {}
    for original, position in positions.items():
        for name, param in layers[position].named_parameters():
            if param.requires_grad:
                targets[f"{original}.{name}"] = param
    check_adapter_state(state, {k: tuple(v.shape) for k, v in targets.items()})
    with torch.no_grad():
        for key, param in targets.items():
            param.copy_(state[key].to(param.device, param.dtype))


def check_adapter_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise a ValueError listing missing keys, unexpected keys and shape mismatches, if any."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: got {tuple(state[k].shape)}, expected {expected[k]}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_abbrev(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_abbrev(shapes)}")
    if problems:
        raise ValueError("adapter state does not match the model's adapter: " + "; ".join(problems))


def adapter_num_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of an adapter state's tensors as stored (elements × element size, per tensor's dtype), summed."""
    return sum(t.numel() * t.element_size() for t in state.values())


def _has_lora(block: nn.Module) -> bool:
    return any("lora_" in name for name, _ in block.named_parameters())


def _linear_names(block: nn.Module) -> list[str]:
    # Every linear leaf of the block (GPT-2 uses transformers' Conv1D, which peft also adapts).
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    }
    return sorted(names)


def _abbrev(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', … ({len(items) - limit} more)' if len(items) > limit else ''}]"
