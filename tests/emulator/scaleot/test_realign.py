"""Re-alignment (FedBiOT's, on ScaleOT's harmonizers): the gap to the full model shrinks with a trained
adapter in place, and nothing but the harmonizers moves."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny

from emulator.config import AdapterConfig, EmulatorConfig
from emulator.lm.architectures import backbone, get_layers
from emulator.lm.surgery import capture_blocks
from emulator.scaleot.assembly import build_emulator
from emulator.scaleot.blocks import normalized_mse
from emulator.scaleot.realign import harmonizer_state, load_harmonizer_state_, realign_
from emulator.tuning.adapters import adapter_state, load_adapter_state_, prepare_adapter_
from emulator.tuning.plug_in import plug_in_

BLOCKS = torch.randint(0, 2000, (32, 16), generator=torch.Generator().manual_seed(0))
PROBE = torch.randint(0, 2000, (8, 16), generator=torch.Generator().manual_seed(9))  # never trained on


@pytest.fixture
def models():
    return emulator_and_full()


def emulator_and_full():
    """A tiny-llama ScaleOT emulator (2 of 4 middle blocks harmonized) and the full model, both carrying the
    same bottom/top adapter moved well away from the one the emulator was built around."""
    full = copy.deepcopy(tiny("tiny-llama")[0])
    config = EmulatorConfig.of(alpha=0.5, rank_keep=1.0, stage1_steps=2, batch_size=4, harmonizer_rank=8)
    emulator = build_emulator(full, config, BLOCKS, progress=False)
    positions = emulator.adapter_positions()
    prepare_adapter_(emulator.model, positions, AdapterConfig())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(3)
        state = {
            k: v + 0.5 * v.std() * torch.randn_like(v)
            for k, v in adapter_state(emulator.model, positions).items()
        }
    load_adapter_state_(emulator.model, positions, state)
    plug_in_(full, state, sorted(positions), AdapterConfig())
    return emulator, full


def gap(emulator, full) -> float:
    """The hidden-state normalised MSE leaving the two middles, on ``PROBE``."""
    last = max(e.original for e in emulator.layer_map if e.kind != "adapter")
    position = emulator.layer_map[last].position
    with torch.no_grad():
        with capture_blocks(get_layers(full), [last], inputs=False) as target:
            backbone(full)(input_ids=PROBE)
        with capture_blocks(get_layers(emulator.model), [position], inputs=False) as pred:
            backbone(emulator.model)(input_ids=PROBE)
    return float(normalized_mse(pred.outputs[position], target.outputs[last], "token"))


def test_realignment_lowers_the_gap_and_moves_only_the_harmonizers(models):
    emulator, full = models
    before_emulator = {k: v.clone() for k, v in emulator.model.state_dict().items()}
    before_full = {k: v.clone() for k, v in full.state_dict().items()}
    flags = {n: p.requires_grad for n, p in emulator.model.named_parameters()}
    harmonizers_before = harmonizer_state(emulator.model, emulator.layer_map)
    gap_before = gap(emulator, full)

    result = realign_(
        emulator.model, full, emulator.layer_map, BLOCKS, steps=30, lr=1e-3, batch_size=4, seed=1
    )

    assert result.loss_after < 0.8 * result.loss_before
    assert gap(emulator, full) < 0.85 * gap_before  # on a batch it never trained on
    replaced = {str(e.original) for e in emulator.layer_map if e.kind == "harmonizer"}
    assert len(replaced) == 2 and {k.split(".")[0] for k in result.state} == replaced
    assert sorted(result.state) == sorted(harmonizers_before)
    moved = [k for k, v in emulator.model.state_dict().items() if not torch.equal(v, before_emulator[k])]
    assert moved and all(".up." in k or ".down." in k or ".norm." in k for k in moved), moved
    assert all(torch.equal(v, before_full[k]) for k, v in full.state_dict().items())
    assert {n: p.requires_grad for n, p in emulator.model.named_parameters()} == flags
    for key, tensor in harmonizer_state(emulator.model, emulator.layer_map).items():
        assert torch.equal(tensor, result.state[key]), key


def test_a_harmonizer_state_loads_back_and_a_foreign_one_is_refused(models):
    emulator, full = models
    own = harmonizer_state(emulator.model, emulator.layer_map)
    realign_(emulator.model, full, emulator.layer_map, BLOCKS, steps=2, lr=1e-2, batch_size=4)
    load_harmonizer_state_(emulator.model, emulator.layer_map, own)
    assert all(
        torch.equal(v, own[k]) for k, v in harmonizer_state(emulator.model, emulator.layer_map).items()
    )

    key = sorted(own)[0]
    with pytest.raises(ValueError, match=rf"missing keys \['{key}'\]"):
        load_harmonizer_state_(emulator.model, emulator.layer_map, {k: v for k, v in own.items() if k != key})
    with pytest.raises(ValueError, match=rf"shapes \['{key}: got \(1,\)"):
        load_harmonizer_state_(emulator.model, emulator.layer_map, own | {key: torch.zeros(1)})


def test_realignment_needs_steps_and_harmonizers(models):
    emulator, full = models
    with pytest.raises(ValueError, match="steps=0 must be >= 1"):
        realign_(emulator.model, full, emulator.layer_map, BLOCKS, steps=0, lr=1e-2, batch_size=4)
    no_harmonizers = [e for e in emulator.layer_map if e.kind != "harmonizer"]
    with pytest.raises(ValueError, match=r"with harmonizers \(0\)"):
        realign_(emulator.model, full, no_harmonizers, BLOCKS, steps=1, lr=1e-2, batch_size=4)
