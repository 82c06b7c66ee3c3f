"""Plug-in: adapters trained on an emulator go back into the full model by original index, strictly."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, tiny

from emulator.config import AdapterConfig, EmulatorConfig
from emulator.scaleot.assembly import build_emulator
from emulator.scaleot.blocks import adapter_layers
from emulator.tuning.adapters import adapter_state, prepare_adapter_
from emulator.tuning.plug_in import plug_in_

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))


def emulator_with_adapter(name: str, mode: str):
    model, tokenizer = tiny(name)
    config = EmulatorConfig.of(method="uniform", alpha=0.5, rank_keep=0.5)
    emulator = build_emulator(model, config, progress=False)
    adapter = AdapterConfig(mode=mode)
    prepare_adapter_(emulator.model, emulator.adapter_positions(), adapter)
    return emulator, adapter


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_untrained_adapter_plugged_in_reproduces_the_full_model(name, mode):
    emulator, adapter = emulator_with_adapter(name, mode)
    state = adapter_state(emulator.model, emulator.adapter_positions())
    assert {int(k.split(".")[0]) for k in state} == {0, 1, 6, 7}
    full = copy.deepcopy(tiny(name)[0])
    plug_in_(full, state, adapter_layers(8, 2, 2), adapter)
    with torch.no_grad():
        assert torch.equal(full(IDS).logits, tiny(name)[0](IDS).logits)


@pytest.mark.parametrize("name", TINY)
def test_trained_adapter_lands_in_the_same_original_blocks(name):
    emulator, adapter = emulator_with_adapter(name, "full")
    positions = emulator.adapter_positions()
    state = {k: v + 0.01 for k, v in adapter_state(emulator.model, positions).items()}
    full = copy.deepcopy(tiny(name)[0])
    plug_in_(full, state, adapter_layers(8, 2, 2), adapter)
    assert adapter_state(full, {i: i for i in positions}).keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in adapter_state(full, {i: i for i in positions}).items())


def test_key_and_shape_mismatches_are_listed():
    emulator, adapter = emulator_with_adapter("tiny-llama", "full")
    state = adapter_state(emulator.model, emulator.adapter_positions())
    state.pop("7.mlp.up_proj.weight")
    state["9.mlp.up_proj.weight"] = torch.zeros(1)
    state["0.mlp.down_proj.weight"] = torch.zeros(3, 3)
    full = copy.deepcopy(tiny("tiny-llama")[0])
    with pytest.raises(ValueError) as error:
        plug_in_(full, state, adapter_layers(8, 2, 2), adapter)
    message = str(error.value)
    assert "missing keys [7.mlp.up_proj.weight]" in message
    assert "unexpected keys [9.mlp.up_proj.weight]" in message
    assert "shape mismatches [0.mlp.down_proj.weight: got (3, 3), expected (64, 128)]" in message
