"""Stage 1 from cached activations (issue 21 §1): the cache gives the live loss, is computed once, the
least-squares start fits its block, and the cached path is a config choice with one-line refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import tiny

from emulator.config import EmulatorConfig
from emulator.lm.architectures import get_layers
from emulator.lm.surgery import frozen_view
from emulator.scaleot import activation_cache
from emulator.scaleot.activation_cache import cached_local_loss, fit_least_squares_, middle_states
from emulator.scaleot.blocks import middle_blocks
from emulator.scaleot.harmonizer import Harmonizer, make_harmonizers
from emulator.scaleot.layer_replace import _MixedNetwork, dynamic_layer_replace


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    return tmp_path / "activations"


def _blocks(n: int = 12, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2000, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def _busy_harmonizers(middle: list[int], width: int) -> dict[int, Harmonizer]:
    harmonizers = make_harmonizers(middle, width, rank=8, seed=1)
    with torch.no_grad():
        for h in harmonizers.values():  # not the identity: a loss that would hide a wrong target
            h.up.weight.normal_(0, 0.05)
    return harmonizers


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_cached_states_give_the_live_local_loss(cache, name):
    model = tiny(name)[0]
    view = frozen_view(model)
    middle = middle_blocks(len(get_layers(view)), 1, 1)
    harmonizers = _busy_harmonizers(middle, model.config.hidden_size)
    blocks = _blocks()
    states = middle_states(view, middle, blocks, batch_size=5)
    assert states.shape == (12, len(middle) + 1, 16, model.config.hidden_size)
    live = _MixedNetwork(view, list(get_layers(view)), harmonizers, middle)
    for norm in ("token", "dimension", "global"):
        torch.testing.assert_close(
            cached_local_loss(harmonizers, middle, torch.from_numpy(states[3:7].copy()), norm),
            live.local_loss(blocks[3:7], norm),
            rtol=1e-5,
            atol=1e-6,
        )


def test_states_are_computed_once_per_model_blocks_and_middle(cache, monkeypatch):
    model = tiny("tiny-llama")[0]
    middle = middle_blocks(len(get_layers(model)), 1, 1)
    first = middle_states(model, middle, _blocks(), batch_size=4)
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob(".*"))  # no temporary left

    def recompute(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(activation_cache, "_write_states", recompute)
    np.testing.assert_array_equal(middle_states(model, middle, _blocks(), batch_size=4), first)
    for other in ((_blocks(seed=1), middle), (_blocks(), middle[1:])):  # other blocks, another middle
        with pytest.raises(AssertionError, match="computed again"):
            middle_states(model, other[1], other[0], batch_size=4)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        get_layers(changed)[1].mlp.down_proj.weight.add_(0.01)
    with pytest.raises(AssertionError, match="computed again"):  # other weights
        middle_states(changed, middle, _blocks(), batch_size=4)
    with pytest.raises(ValueError, match=r"middle=\[1, 3\] must be a non-empty run of consecutive"):
        middle_states(model, [1, 3], _blocks(), batch_size=4)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("norm", ["token", "dimension", "global"])
def test_least_squares_start_reproduces_a_linear_block_of_its_rank(activation, norm):
    generator = torch.Generator().manual_seed(0)
    width, rank = 24, 8
    harmonizer = Harmonizer(width, rank, activation)
    inputs = torch.randn(2000, width, generator=generator) * (1 + torch.rand(2000, 1, generator=generator))
    low_rank = torch.randn(width, rank // 2, generator=generator) @ torch.randn(
        rank // 2, width, generator=generator
    )
    bias = torch.randn(width, generator=generator)
    outputs = inputs + harmonizer.norm(inputs).detach() @ low_rank * 0.3 + bias
    fit_least_squares_(harmonizer, inputs, outputs, norm, ridge=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(harmonizer(inputs), outputs, rtol=1e-3, atol=1e-3)


def test_least_squares_start_beats_the_identity_on_a_real_block(cache):
    model = tiny("tiny-llama")[0]
    middle = middle_blocks(len(get_layers(model)), 1, 1)
    states = torch.from_numpy(np.array(middle_states(model, middle, _blocks(n=24), batch_size=8)))
    train, test = states[:16], states[16:]  # fitted on some blocks, judged on others
    identity = make_harmonizers(middle, model.config.hidden_size, rank=16)
    fitted = copy.deepcopy(identity)
    width = states.shape[-1]
    for k, i in enumerate(middle):
        fit_least_squares_(
            fitted[i], train[:, k].reshape(-1, width), train[:, k + 1].reshape(-1, width), "token"
        )
    with torch.no_grad():
        before = cached_local_loss(identity, middle, test, "token")
        after = cached_local_loss(fitted, middle, test, "token")
    assert after < 0.8 * before


def test_cached_stage1_trains_from_the_cache_and_starts_from_the_fit(cache):
    model = tiny("tiny-llama")[0]
    config = EmulatorConfig.of(
        alpha=0.5, adapter_bottom=1, adapter_top=1, stage1_steps=6, policy_interval=2, batch_size=4,
        seq_len=16, harmonizer_rank=16, cached_blocks=16, harmonizer_init="least-squares",
    )  # fmt: skip
    blocks = _blocks(n=24)
    result = dynamic_layer_replace(model, blocks[:20], blocks[20:], config, progress=False)
    assert len(list(cache.glob("*.npy"))) == 1
    assert len(result.loss_curve) == 6 and len(result.reward_curve) == 3
    assert all(h.up.weight.abs().sum() > 0 for h in result.harmonizers.values())  # not the identity
    assert result.cpu_seconds > 0
    identity = dynamic_layer_replace(
        model, blocks[:20], blocks[20:], config.updated(harmonizer_init="identity"), progress=False
    )
    assert result.loss_curve[0] < identity.loss_curve[0]  # the fit starts below the dropped block
    assert len(list(cache.glob("*.npy"))) == 1  # the second emulator read the first one's states


def test_the_cached_path_is_a_config_choice_keyed_only_when_set():
    default = EmulatorConfig.of()
    assert "cached_blocks" not in default.build_dict()["stage1"]  # the bundles built before keep their keys
    cached = EmulatorConfig.of(cached_blocks=256, harmonizer_init="least-squares")
    assert cached.build_dict()["stage1"] | {"cached_blocks": 0, "harmonizer_init": "identity"} == {
        **default.build_dict()["stage1"],
        "cached_blocks": 0,
        "harmonizer_init": "identity",
    }
    assert cached.build_dict()["stage1"]["cached_blocks"] == 256
    with pytest.raises(ValueError, match=r"^emulator.cached_blocks=8 caches what harmonizer_loss='local'"):
        EmulatorConfig.of(cached_blocks=8, harmonizer_loss="hidden")
    with pytest.raises(ValueError, match=r"^emulator.harmonizer_init='least-squares' fits on the cached"):
        EmulatorConfig.of(harmonizer_init="least-squares")
    with pytest.raises(ValueError, match=r"^emulator.share_replaced=true trains each harmonizer on a shared"):
        EmulatorConfig.of(cached_blocks=8, share_replaced=True)
    with pytest.raises(ValueError, match=r"harmonizer_init='zero'"):
        EmulatorConfig.of(harmonizer_init="zero")
