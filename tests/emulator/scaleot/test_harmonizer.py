"""Harmonizer: identity at start, decoder-layer call signature, drop-in use in every family's layer list."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, tiny

from emulator.lm.architectures import get_layers, hidden_size, set_layers_
from emulator.lm.surgery import frozen_view
from emulator.scaleot.harmonizer import Harmonizer, make_harmonizers


def test_starts_as_identity_and_ignores_layer_arguments():
    harmonizer = Harmonizer(hidden_size=16, rank=4)
    h = torch.randn(2, 5, 16) * 50  # large values, as SmolLM2's residual stream has
    out = harmonizer(h, None, attention_mask=torch.ones(2, 5), position_embeddings=(h, h), use_cache=False)
    assert isinstance(out, torch.Tensor) and torch.equal(out, h)


def test_learns_after_one_step():
    harmonizer = Harmonizer(hidden_size=8, rank=2, activation="gelu")
    h = torch.randn(4, 3, 8)
    (harmonizer(h) - 2 * h).pow(2).mean().backward()
    torch.optim.SGD(harmonizer.parameters(), lr=0.1).step()
    assert not torch.equal(harmonizer(h), h)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0, "rank": 4}, "harmonizer hidden_size=0 and rank=4 must be >= 1"),
        ({"hidden_size": 8, "rank": 4, "activation": "tanh"}, "harmonizer activation='tanh' is not allowed"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Harmonizer(**kwargs)


def test_make_harmonizers_is_seeded():
    a = make_harmonizers([2, 3], hidden_size=8, rank=2, seed=1)
    b = make_harmonizers([2, 3], hidden_size=8, rank=2, seed=1)
    assert sorted(a) == [2, 3]
    assert torch.equal(a[3].down.weight, b[3].down.weight)


@pytest.mark.parametrize("name", TINY)
def test_in_the_layer_list_an_identity_harmonizer_equals_dropping_the_block(name):
    model, _ = tiny(name)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    replaced, dropped = frozen_view(model), frozen_view(model)
    layers = list(get_layers(replaced))
    layers[3] = Harmonizer(hidden_size(model), rank=8)
    set_layers_(replaced, layers, list(range(len(layers))))
    keep = [i for i in range(len(layers)) if i != 3]
    set_layers_(dropped, [get_layers(dropped)[i] for i in keep], keep)
    with torch.no_grad():
        torch.testing.assert_close(replaced(ids).logits, dropped(ids).logits)
