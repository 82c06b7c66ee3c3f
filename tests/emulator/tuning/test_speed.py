"""Work saved without changing a number: trimmed logits, length buckets, checkpointing, memoised zero-shot."""

from __future__ import annotations

import contextlib

import pytest
import torch

from emulator.data.encoding import bucketed_order, encode_example, training_batches
from emulator.data.tasks import MCExample, synthetic_examples
from emulator.evaluation.scoring import choice_logliks, shared_groups
from emulator.lm.architectures import ARCHITECTURES, backbone, get_layers
from emulator.lm.models import TINY_CONFIGS, load_model
from emulator.scaleot.blocks import adapter_layers
from emulator.tuning.adapters import AdapterConfig, prepare_adapter_
from emulator.tuning.training import answer_loss, checkpoint_every_block, train_adapter

TINY = sorted(TINY_CONFIGS)


def _examples(n: int) -> list[MCExample]:
    # Contexts and choices of varied lengths, so that buckets, padding and trimming all matter.
    return synthetic_examples(n) + [
        MCExample("A much longer context, " * 7 + "so padding matters:", (" yes", " no, not at all"), 0),
        MCExample("Short:", (" a b c d e f", " g", " h i"), 2),
    ]


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_family_is_in_the_architecture_table_with_its_final_norm(name):
    model, _ = load_model(name)
    arch = ARCHITECTURES[model.config.model_type]
    assert arch.final_norm.startswith(arch.backbone + ".")
    assert "Norm" in type(model.get_submodule(arch.final_norm)).__name__
    assert backbone(model) is model.get_submodule(arch.backbone)
    # transformers' own base model: stage 1 and distillation ran on it before they shared this function
    assert backbone(model) is model.base_model


@pytest.mark.parametrize("name", TINY)
def test_answer_loss_equals_the_models_own_loss(name, tokenizer):
    model, _ = load_model(name)
    batch = next(iter(training_batches(tokenizer, _examples(6), batch_size=8, max_length=64, seed=0)))
    assert answer_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), abs=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_trimmed_logits_give_the_same_logliks_as_the_full_path(name, tokenizer):
    model, _ = load_model(name)
    examples = _examples(7)
    for shared in (True, False):
        new = choice_logliks(model, tokenizer, examples, batch_size=3, shared_context=shared)
        old = choice_logliks(
            model, tokenizer, examples, batch_size=3, shared_context=shared, trim_logits=False, bucketed=False
        )
        flat_new = [s for scores in new for s in scores]
        flat_old = [s for scores in old for s in scores]
        assert flat_new == pytest.approx(flat_old, abs=1e-4)
        assert [len(s) for s in new] == [len(e.choices) for e in examples]


@pytest.mark.parametrize("bucketed", [True, False])
def test_shared_groups_cover_every_example_once(bucketed, tokenizer):
    examples = _examples(23)
    encoded = [[encode_example(tokenizer, e.context, c, 64) for c in e.choices] for e in examples]
    names = [10 * i for i in range(len(examples))]
    groups = shared_groups(encoded, names, batch_size=4, bucketed=bucketed)
    assert sorted(n for g in groups for n in g) == names
    assert groups == shared_groups(encoded, names, batch_size=4, bucketed=bucketed)  # deterministic
    if bucketed:
        longest = [
            max(len(ids) - lab.count(-100) for ids, lab in encoded[n // 10]) for g in groups for n in g
        ]
        assert longest == sorted(longest, reverse=True)  # a group holds choices of similar length


def test_bucketed_order_covers_every_index_once_with_similar_lengths_per_batch():
    lengths = [(7 * i) % 53 for i in range(203)]
    batches = bucketed_order(lengths, batch_size=5, seed="3-0")
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert sum(len(b) < 5 for b in batches) == 1 and all(len(b) <= 5 for b in batches)
    assert batches == bucketed_order(lengths, 5, "3-0") and batches != bucketed_order(lengths, 5, "3-1")
    # Within a batch the spread of lengths is far below the spread over all examples.
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 0.25 * (max(lengths) - min(lengths))


def _trained(tokenizer, **options) -> tuple[float, list[torch.Tensor]]:
    """Mean loss and trained adapter weights after 3 steps."""
    model, _ = load_model("tiny-llama")
    positions = {i: i for i in adapter_layers(8, 2, 2)}
    prepare_adapter_(model, positions, AdapterConfig())
    batches = training_batches(tokenizer, _examples(6), batch_size=4, max_length=64, seed=0, steps=3)
    result = train_adapter(model, positions, batches, lr=1e-3, seed=0, **options)
    assert not any("forward" in vars(block) for block in get_layers(model))  # checkpointing undone
    return result.mean_loss, [p.detach().clone() for p in model.parameters() if p.requires_grad]


def test_checkpointing_and_trimming_train_the_same_adapter(tokenizer):
    loss, weights = _trained(tokenizer)
    assert weights
    for options in ({"checkpoint_blocks": True}, {"trim_logits": False}):
        other_loss, other = _trained(tokenizer, **options)
        assert other_loss == pytest.approx(loss, abs=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(weights, other, strict=True))


def test_checkpointing_keeps_little_more_than_each_blocks_input_for_backward(tokenizer):
    model, _ = load_model("tiny-llama")
    positions = {i: i for i in adapter_layers(8, 2, 2)}
    prepare_adapter_(model, positions, AdapterConfig())
    batch = next(iter(training_batches(tokenizer, _examples(6), batch_size=8, max_length=64, seed=0)))

    weights = {p.data_ptr() for p in model.parameters()}

    def saved_numel(checkpointed: bool) -> int:
        """Elements of the activations (not weights) autograd keeps for the backward pass of one forward."""
        saved = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(0 if t.data_ptr() in weights else t.numel())
            return t

        blocks = checkpoint_every_block(model) if checkpointed else contextlib.nullcontext()
        with blocks, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            answer_loss(model, batch)
        return sum(saved)

    # Unchecked, each of the 8 blocks keeps its attention and MLP intermediates; checkpointed, what is left is
    # outside the blocks (the head on the answer positions): 0.26 here, about 0.6 with only the 4 frozen
    # blocks checkpointed.
    assert saved_numel(True) < 0.4 * saved_numel(False)


def test_memoised_zero_shot_is_reused_and_invalidated_by_model_or_split(tmp_path, tokenizer, monkeypatch):
    import emulator.evaluation.memo as memo

    scored = []
    real = memo.multiple_choice_accuracy
    monkeypatch.setattr(memo, "multiple_choice_accuracy", lambda *a, **k: scored.append(1) or real(*a, **k))
    model, _ = load_model("tiny-llama")
    test, validation = synthetic_examples(12)[:6], synthetic_examples(12)[6:]
    first = memo.memoised_accuracy(model, tokenizer, test, directory=tmp_path)
    again = memo.memoised_accuracy(model, tokenizer, test, batch_size=3, directory=tmp_path)
    assert again == first and len(scored) == 1  # same model and split: read back, not scored
    memo.memoised_accuracy(model, tokenizer, validation, directory=tmp_path)
    assert len(scored) == 2  # another split
    other, _ = load_model("tiny-llama", seed=1)
    memo.memoised_accuracy(other, tokenizer, test, directory=tmp_path)
    assert len(scored) == 3  # other weights
    with torch.no_grad():
        model.get_output_embeddings().weight[0, 0] += 1.0  # one weight changed in place
    memo.memoised_accuracy(model, tokenizer, test, directory=tmp_path)
    assert len(scored) == 4 and len(list(tmp_path.glob("*.json"))) == 4
    monkeypatch.setattr(memo, "SCORING_VERSION", memo.SCORING_VERSION + 1)
    memo.memoised_accuracy(model, tokenizer, test, directory=tmp_path)
    assert len(scored) == 5  # the scoring definition changed


def test_memo_takes_the_callers_model_hash_instead_of_hashing_again(tmp_path, tokenizer, monkeypatch):
    # A run hashes its full model once (for the bundle key) and hands the hash to the zero-shot memo.
    import emulator.evaluation.memo as memo

    model, _ = load_model("tiny-llama")
    test = synthetic_examples(6)
    sha256 = memo.model_fingerprint(model)
    first = memo.memoised_accuracy(model, tokenizer, test, directory=tmp_path)
    monkeypatch.setattr(memo, "model_fingerprint", lambda _: pytest.fail("the model was hashed again"))
    assert memo.memoised_accuracy(model, tokenizer, test, directory=tmp_path, model_sha256=sha256) == first
    assert len(list(tmp_path.glob("*.json"))) == 1  # the same key as the one computed from the model
