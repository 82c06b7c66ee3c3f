"""Artefacts other tools load: the plug-in model as a transformers checkpoint, the LoRA adapter as a peft one.

- ``plug-in/``: the full model with the trained adapter in it (LoRA factors merged into the weights), written
  with ``save_pretrained`` together with the tokenizer; ``AutoModelForCausalLM.from_pretrained`` loads it.
- ``peft-adapter/`` (LoRA adapters only): ``adapter_config.json`` + ``adapter_model.safetensors`` written by
  peft itself, with ``layers_to_transform`` naming the adapter blocks; ``PeftModel.from_pretrained(base,
  directory)`` puts it onto the unmodified base model.

Both are built with peft's and transformers' own code (``get_peft_model``, ``merge_and_unload``,
``save_pretrained``); our adapter tensors enter by the same strict key check as plug-in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from emulator.config import AdapterConfig
from emulator.files import replacing
from emulator.lm.architectures import architecture_of, get_layers
from emulator.tuning.adapters import load_adapter_state_, lora_config
from emulator.tuning.plug_in import plug_in_

PLUG_IN_DIR = "plug-in"
PEFT_ADAPTER_DIR = "peft-adapter"


def export_plug_in(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: Mapping[str, torch.Tensor],
    layers: Sequence[int],
    config: AdapterConfig,
    directory: str | Path,
    base_model: str = "",
) -> dict[str, Path]:
    """Write the plug-in model (and, for LoRA, the peft adapter) of ``state`` into ``directory``.

    Args:
        model: the full model as loaded, without any adapter; it is consumed (adapters go in in place).
        tokenizer: saved next to the plug-in model.
        state: adapter tensors keyed ``"{original index}.{name in block}"`` (``emulator.tuning.adapters``).
        layers: original indices of the adapter blocks.
        config: full or LoRA adapters.
        directory: created if needed; existing ``plug-in/`` and ``peft-adapter/`` are replaced.
        base_model: recorded as the peft adapter's ``base_model_name_or_path`` (a hub id or directory loads
            directly; ``smollm2-135m`` and ``tiny-*`` through ``emulator.lm.models.load_model``).

    Returns:
        ``{"plug_in": path}`` plus ``{"peft_adapter": path}`` for LoRA adapters.

    Raises:
        ValueError: the keys or shapes of ``state`` do not match the model's adapter blocks.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if config.mode == "full":
        plugged = plug_in_(model, state, layers, config)
    else:
        arch = architecture_of(model)
        peft_config = lora_config(
            config,
            get_layers(model)[layers[0]],
            layers_to_transform=sorted(layers),
            layers_pattern=arch.layers.rsplit(".", 1)[-1],  # the ModuleList's name: "layers", "h"
            fan_in_fan_out=arch.transposed,
        )
        peft_model = get_peft_model(model, peft_config)
        peft_model.peft_config["default"].base_model_name_or_path = base_model or None
        load_adapter_state_(peft_model.base_model.model, {i: i for i in layers}, state)
        # No embedding layers are trained; "auto" would look the base model up on the hub to check.
        written["peft_adapter"] = _save(peft_model, directory / PEFT_ADAPTER_DIR, save_embedding_layers=False)
        plugged = peft_model.merge_and_unload()
    plugged.requires_grad_(False)
    plugged.config.use_cache = True  # load_model turns it off for scoring; generation wants it on
    written["plug_in"] = _save(plugged, directory / PLUG_IN_DIR, tokenizer)
    return written


def _save(
    model: torch.nn.Module, target: Path, tokenizer: PreTrainedTokenizerBase | None = None, **kwargs: object
) -> Path:
    # Written beside the target and renamed into place: a reader never sees half a checkpoint, and a failed
    # write (a full disk) leaves the previous one and no temporary.
    with replacing(target) as tmp:
        model.save_pretrained(tmp, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target
