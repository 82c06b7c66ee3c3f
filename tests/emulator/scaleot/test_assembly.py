"""Emulator assembly: layer maps of every method, exact at alpha 0 / rank 1, the full model left untouched."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import TINY, tiny

from emulator.config import EmulatorConfig
from emulator.data.corpus import corpus_blocks, public_blocks, public_corpus
from emulator.lm.architectures import get_layers
from emulator.scaleot.assembly import build_emulator, uniform_choose
from emulator.scaleot.rank_compression import LowRankLinear

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))


def random_blocks(n: int = 24, seq_len: int = 16) -> torch.Tensor:
    return torch.randint(0, 2000, (n, seq_len), generator=torch.Generator().manual_seed(0))


def build(name: str, **kwargs):
    model, tokenizer = tiny(name)
    # The pre-issue-9 stage-1 and SRC defaults these layer maps were written against; tests of the new knobs
    # pass their own values.
    defaults = dict(stage1_steps=2, distill_steps=2, batch_size=4, policy_interval=1, train_replace_ratio=0.0)
    defaults |= dict(src_rank="fraction", src_projections="qkvo")
    config = EmulatorConfig.of(**{**defaults, **kwargs})
    return build_emulator(model, config, random_blocks(), progress=False)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_uniform_choose_matches_offsite_tuning():
    assert uniform_choose(26, 13) == [round(i * 25 / 12) for i in range(13)]
    assert uniform_choose(4, 2) == [0, 3]
    assert uniform_choose(4, 1) == [0] and uniform_choose(4, 0) == []


@pytest.mark.parametrize("name", TINY)
def test_full_method_copies_the_model(name):
    # The full model's one name: scaleot or uniform at alpha 0 and rank_keep 1 is refused by EmulatorConfig.
    emulator = build(name, **EmulatorConfig.full().to_dict())
    assert [e.kind for e in emulator.layer_map] == ["adapter"] * 2 + ["original"] * 4 + ["adapter"] * 2
    assert torch.equal(logits(emulator.model), logits(tiny(name)[0]))
    assert emulator.num_parameters == emulator.full_num_parameters


@pytest.mark.parametrize("name", TINY)
def test_scaleot_layer_map(name):
    emulator = build(name, alpha=0.5, rank_keep=0.5)
    kinds = [e.kind for e in emulator.layer_map]
    assert kinds[:2] == kinds[-2:] == ["adapter", "adapter"]
    assert sorted(kinds[2:6]) == ["compressed", "compressed", "harmonizer", "harmonizer"]
    assert [e.position for e in emulator.layer_map] == list(range(8))
    assert emulator.adapter_positions() == {0: 0, 1: 1, 6: 6, 7: 7}
    assert sorted(emulator.scores) == [2, 3, 4, 5] and len(emulator.loss_curve) == 2
    layers = get_layers(emulator.model)
    for entry in emulator.layer_map:
        if entry.kind == "harmonizer":
            assert type(layers[entry.position]).__name__ == "Harmonizer"
        if entry.kind == "compressed":
            assert set(entry.ranks.values()) <= {32, 16}  # half of 64, or of the 32-wide GQA k/v
    assert emulator.num_parameters < emulator.full_num_parameters
    assert "harmonizer:" in emulator.describe()


@pytest.mark.parametrize("name", TINY)
def test_uniform_layer_map_drops_blocks_and_reindexes(name):
    emulator = build(name, method="uniform", alpha=0.5, rank_keep=0.2)
    assert [(e.original, e.kind, e.position) for e in emulator.layer_map] == [
        (0, "adapter", 0), (1, "adapter", 1), (2, "compressed", 2), (3, "dropped", None),
        (4, "dropped", None), (5, "compressed", 3), (6, "adapter", 4), (7, "adapter", 5),
    ]  # fmt: skip
    assert emulator.adapter_positions() == {0: 0, 1: 1, 6: 4, 7: 5}
    assert emulator.source_index() == [0, 1, 2, 5, 6, 7]
    layers = get_layers(emulator.model)
    assert len(layers) == 6 and emulator.model.config.num_hidden_layers == 6
    assert all(
        isinstance(layers[2].get_submodule(p), LowRankLinear) for p in emulator.layer_map[2].factorized
    )
    idx = [m.layer_idx for m in layers[3].modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert idx and set(idx) == {3}
    assert logits(emulator.model).shape == (2, 12, 49152)


@pytest.mark.parametrize("name", TINY)
def test_uniform_distill_trains_only_the_kept_middle(name):
    model, _ = tiny(name)
    emulator = build(name, method="uniform+distill", alpha=0.5, rank_keep=1.0, distill_steps=4)
    assert len(emulator.loss_curve) == 4
    full_layers, layers = get_layers(model), get_layers(emulator.model)
    for entry in emulator.layer_map:
        if entry.position is None:
            continue
        same = all(
            torch.equal(a, b)
            for a, b in zip(
                full_layers[entry.original].parameters(), layers[entry.position].parameters(), strict=True
            )
        )
        assert same == (entry.kind == "adapter")
    assert not any(p.requires_grad for p in emulator.model.parameters())


@pytest.mark.parametrize("name", TINY)
def test_build_leaves_the_full_model_untouched_and_shares_no_storage(name):
    model, _ = tiny(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    config_before = model.config.to_dict()
    emulator = build(name, method="scaleot", alpha=0.5, rank_keep=0.5, harmonizer_loss="lm+local")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert model.config.to_dict() == config_before and len(get_layers(model)) == 8
    full_storage = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not any(p.untyped_storage().data_ptr() in full_storage for p in emulator.model.parameters())


def test_the_configured_public_corpus_is_read_by_the_caller_and_built_from():
    model, tokenizer = tiny("tiny-llama")
    config = EmulatorConfig.of(
        alpha=0.5, stage1_steps=1, policy_interval=1, seq_len=32, batch_size=2, corpus="pydoc"
    )
    blocks = public_blocks(tokenizer, config)
    text = public_corpus("train", "pydoc")
    assert torch.equal(blocks, corpus_blocks(tokenizer, text, 32))
    emulator = build_emulator(model, config, blocks, progress=False)
    assert len(emulator.loss_curve) == 1 and len(emulator.reward_curve) == 1
    # a method that reads no public text needs no blocks, and is given none
    assert public_blocks(tokenizer, config.updated(method="uniform")) is None


@pytest.mark.parametrize("method", ["scaleot", "importance-drop", "uniform+distill"])
def test_a_method_that_trains_on_public_text_refuses_to_build_without_it(method):
    model, _ = tiny("tiny-llama")
    with pytest.raises(
        ValueError, match=f"^emulator.method='{re.escape(method)}' trains on the public corpus"
    ):
        build_emulator(model, EmulatorConfig.of(method=method, alpha=0.5), progress=False)


def test_adapters_leaving_no_middle_are_refused():
    with pytest.raises(
        ValueError, match="adapter layers bottom=4, top=4 must be >= 0 and leave at least one"
    ):
        build("tiny-llama", adapter_bottom=4, adapter_top=4)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", ["scaleot", "uniform"])
def test_cached_generation_matches_uncached_greedy_decoding(name, method):
    emulator = build(name, method=method, alpha=0.5, rank_keep=0.5)
    prompt = IDS[:1, :5]
    emulator.model.generation_config.pad_token_id = 2
    generated = emulator.model.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=True)
    ids = prompt
    for _ in range(4):
        ids = torch.cat([ids, logits_of(emulator.model, ids)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, ids)


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("name", TINY)
def test_shared_context_scoring_matches_whole_sequence_scoring_on_emulators(name):
    # Emulator layer lists hold harmonizers (no KV cache) and low-rank projections: the context's cache must
    # still serve every choice exactly.
    from emulator.data.tasks import MCExample, synthetic_examples
    from emulator.evaluation.scoring import choice_logliks

    emulator = build(name, method="scaleot", alpha=0.5, rank_keep=0.5)
    _, tokenizer = tiny(name)
    examples = synthetic_examples(5) + [MCExample("A longer context, " * 4 + "then:", (" a b c", " d"), 1)]
    shared = choice_logliks(emulator.model, tokenizer, examples, batch_size=5, shared_context=True)
    whole = choice_logliks(emulator.model, tokenizer, examples, batch_size=5, shared_context=False)
    flat = lambda rows: torch.tensor([s for row in rows for s in row])  # noqa: E731
    assert torch.allclose(flat(shared), flat(whole), atol=1e-4)


@pytest.mark.parametrize(("alpha", "scope"), [(0.25, "group"), (0.5, "group"), (0.5, "global")])
def test_importance_drop_removes_exactly_round_alpha_m_of_the_lowest_scored_blocks(alpha, scope):
    emulator = build("tiny-llama", method="importance-drop", alpha=alpha, replace_scope=scope)
    scaleot = build("tiny-llama", method="scaleot", alpha=alpha, replace_scope=scope)
    kinds = [e.kind for e in emulator.layer_map]
    assert kinds.count("dropped") == round(alpha * 4) and "harmonizer" not in kinds  # 4 middle blocks
    dropped = [e.original for e in emulator.layer_map if e.kind == "dropped"]
    # The same stage 1, so the blocks ScaleOT replaces are exactly those importance-drop drops.
    assert emulator.scores == scaleot.scores
    assert dropped == [e.original for e in scaleot.layer_map if e.kind == "harmonizer"]
    assert len(get_layers(emulator.model)) == 8 - len(dropped)
    assert logits(emulator.model).shape == (2, 12, emulator.model.config.vocab_size)


def test_uniform_selection_puts_harmonizers_where_layerdrop_drops_blocks():
    # The ablation that separates ScaleOT's ranking from its harmonizers: the same stage 1, as many
    # harmonizers, at the blocks uniform LayerDrop drops (it keeps the first and last middle block).
    ranked = build("tiny-llama", alpha=0.5, group_size=4)
    spread = build("tiny-llama", alpha=0.5, group_size=4, selection="uniform")
    layerdrop = build("tiny-llama", method="uniform", alpha=0.5)

    def blocks(emulator, kind):
        return [e.original for e in emulator.layer_map if e.kind == kind]

    assert spread.scores == ranked.scores  # the same stage 1
    assert blocks(spread, "harmonizer") == blocks(layerdrop, "dropped") == [3, 4]
    assert len(blocks(ranked, "harmonizer")) == 2 and blocks(ranked, "harmonizer") != [3, 4]  # ranked: 2, 3
    assert logits(spread.model).shape == (2, 12, spread.model.config.vocab_size)


def test_src_on_the_least_important_kept_blocks_only():
    emulator = build("tiny-llama", alpha=0.25, rank_keep=0.5, src_layers="least-important", src_share=0.5)
    kept = {e.original: e.kind for e in emulator.layer_map if e.kind in ("original", "compressed")}
    compressed = sorted(i for i, kind in kept.items() if kind == "compressed")
    ranked = sorted(kept, key=lambda i: emulator.scores[i])
    assert compressed == sorted(ranked[:2]) and len(kept) == 3  # ceil(0.5 · 3) lowest-scored of 3 kept


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "importance-drop"},
        {"rank_keep": 0.5, "src_rank": "energy", "src_projections": "qk"},
        {"method": "importance-drop", "rank_keep": 0.6, "src_layers": "least-important", "src_share": 0.5},
    ],
)
def test_derived_from_the_stage1_twin_equals_built_from_scratch(kwargs):
    from emulator.scaleot.assembly import derive_emulator, stage1_twin

    config = EmulatorConfig.of(alpha=0.5, stage1_steps=2, batch_size=4, **kwargs)
    model, tokenizer = tiny("tiny-llama")
    twin = build_emulator(model, stage1_twin(config), random_blocks(), progress=False)
    twin_state = {k: v.clone() for k, v in twin.model.state_dict().items()}
    built = build_emulator(model, config, random_blocks(), progress=False)
    derived = derive_emulator(twin, config)
    assert derived.layer_map == built.layer_map and derived.num_parameters == built.num_parameters
    assert derived.model.state_dict().keys() == built.model.state_dict().keys()
    assert all(torch.equal(v, built.model.state_dict()[k]) for k, v in derived.model.state_dict().items())
    torch.testing.assert_close(logits(derived.model), logits(built.model))
    assert all(torch.equal(twin_state[k], v) for k, v in twin.model.state_dict().items())  # base untouched
    with pytest.raises(ValueError, match="is not the stage-1 twin"):
        derive_emulator(built, config)
