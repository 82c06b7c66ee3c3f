"""Families with per-layer settings (Gemma's sliding-window / global layers, SmolLM3's RoPE-less layers).

When the emulator drops or replaces blocks, each remaining block must keep the attention kind and settings it
had in the full model, both in the built emulator and in one rebuilt from its bundle (whose skeleton is made
from the emulator's config alone); the KV cache of shared-context scoring must follow the new positions.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny

from emulator.config import EmulatorConfig
from emulator.data.tasks import MCExample
from emulator.evaluation.scoring import choice_logliks
from emulator.lm import architectures
from emulator.lm.architectures import ARCHITECTURES, architecture_of, get_layers
from emulator.lm.models import TINY_CONFIGS
from emulator.scaleot.assembly import build_emulator
from emulator.scaleot.bundle import load_emulator, save_bundle

# 40 tokens: longer than the tiny Gemmas' 16-token sliding window, so the two attention kinds differ.
IDS = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(1))
PER_LAYER = ["tiny-gemma2", "tiny-gemma3", "tiny-smollm3"]


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_per_layer_config_list_is_in_the_table(name):
    model, _ = tiny(name)
    config = model.config.to_dict()
    n = config.get("num_hidden_layers", config.get("n_layer"))
    per_layer = {k for k, v in config.items() if isinstance(v, list) and len(v) == n}
    assert per_layer <= set(architecture_of(model).per_layer_config)


def _uniform_emulator(name: str, tmp_path):
    """A LayerDrop emulator (middle blocks 3 and 4 dropped, no compression), rebuilt from its bundle."""
    model, tokenizer = tiny(name)
    config = EmulatorConfig.of(method="uniform", alpha=0.5, rank_keep=1.0)
    emulator = build_emulator(model, config, progress=False)
    save_bundle(emulator, tmp_path, name, tokenizer)
    return emulator, load_emulator(tmp_path)[0]


def _block_calls(model: torch.nn.Module) -> dict[int, tuple[torch.Tensor, dict, torch.Tensor]]:
    """What each block received (hidden states, keyword arguments) and returned in one forward of ``IDS``."""
    calls: dict[int, tuple] = {}
    handles = []
    for position, block in enumerate(get_layers(model)):

        def pre(module, args, kwargs, position=position):
            calls[position] = (args[0], dict(kwargs))

        def post(module, args, kwargs, output, position=position):
            calls[position] += (output[0] if isinstance(output, tuple) else output,)

        handles += [
            block.register_forward_pre_hook(pre, with_kwargs=True),
            block.register_forward_hook(post, with_kwargs=True),
        ]
    with torch.no_grad():
        model(IDS)
    for handle in handles:
        handle.remove()
    return calls


def _mismatched_blocks(name: str, emulator_model: torch.nn.Module, layer_map) -> list[int]:
    """Emulator positions whose output differs from the full model's block run as it runs in the full model
    (its own mask, position embeddings and settings) on the same input."""
    full_model, _ = tiny(name)
    full_calls, emulator_calls = _block_calls(full_model), _block_calls(emulator_model)
    full_layers = get_layers(full_model)
    wrong = []
    for entry in layer_map:
        if entry.position is None:
            continue
        hidden, _, output = emulator_calls[entry.position]
        with torch.no_grad():
            expected = full_layers[entry.original](hidden, **full_calls[entry.original][1])
        expected = expected[0] if isinstance(expected, tuple) else expected
        if not torch.allclose(output, expected, atol=1e-5, rtol=1e-5):
            wrong.append(entry.position)
    return wrong


@pytest.mark.parametrize("name", PER_LAYER)
def test_kept_blocks_keep_their_attention_kind_after_layerdrop(name, tmp_path):
    emulator, loaded = _uniform_emulator(name, tmp_path)
    kept = [e.original for e in emulator.layer_map if e.position is not None]
    assert kept == [0, 1, 2, 5, 6, 7]
    full_config = tiny(name)[0].config
    for key in architecture_of(loaded.model).per_layer_config:
        assert getattr(loaded.model.config, key) == [getattr(full_config, key)[i] for i in kept]
    assert _mismatched_blocks(name, emulator.model, emulator.layer_map) == []
    assert _mismatched_blocks(name, loaded.model, loaded.layer_map) == []
    assert tiny(name)[0].config.num_hidden_layers == 8  # the full model is untouched


@pytest.mark.parametrize(
    ("name", "re_indexed"),
    [
        # The model's forward reads layer_types by position: the emulator itself goes wrong.
        ("tiny-gemma3", ()),
        # Blocks read no_rope_layers when they are made: the skeleton rebuilt from the bundle goes wrong.
        ("tiny-smollm3", ("layer_types",)),
    ],
)
def test_without_re_indexing_the_kinds_would_be_wrong(name, re_indexed, tmp_path, monkeypatch):
    # The check above can fail: with a per-layer list left as it was, blocks get another block's settings.
    model_type = TINY_CONFIGS[name]["model_type"]
    row = dataclasses.replace(ARCHITECTURES[model_type], per_layer_config=re_indexed)
    monkeypatch.setitem(architectures.ARCHITECTURES, model_type, row)
    model, tokenizer = tiny(name)
    emulator = build_emulator(model, EmulatorConfig.of(method="uniform", alpha=0.5, rank_keep=1.0))
    if re_indexed:
        save_bundle(emulator, tmp_path, name, tokenizer)
        emulator = load_emulator(tmp_path)[0]
    assert _mismatched_blocks(name, emulator.model, emulator.layer_map) != []


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_shared_context_kv_cache_scores_like_whole_sequences_on_a_sliding_window_emulator(name, tmp_path):
    _, loaded = _uniform_emulator(name, tmp_path)
    tokenizer = tiny(name)[1]
    context = "The garden behind the old stone house by the river has apple trees, pear trees and a table"
    examples = [
        MCExample(f"{context} {i}. What grows there?", (" apples and pears", " stones", " money in jars"), 0)
        for i in range(3)
    ]
    assert len(tokenizer(examples[0].context).input_ids) > TINY_CONFIGS[name]["sliding_window"]
    shared = choice_logliks(loaded.model, tokenizer, examples, batch_size=4, shared_context=True)
    whole = choice_logliks(loaded.model, tokenizer, examples, batch_size=4, shared_context=False)
    torch.testing.assert_close(torch.tensor(shared), torch.tensor(whole), atol=1e-4, rtol=1e-5)
