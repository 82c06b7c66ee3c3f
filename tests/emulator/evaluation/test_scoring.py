"""Multiple-choice scoring, perplexity and paired differences."""

from __future__ import annotations

import math

import pytest
import torch

import emulator.evaluation.scoring as evaluation
from emulator.data.corpus import corpus_blocks
from emulator.data.encoding import IGNORE_INDEX, encode_example, pad_batch, pad_token_id
from emulator.data.tasks import MCExample, synthetic_examples
from emulator.evaluation.scoring import (
    choice_length,
    choice_logliks,
    label_logprobs,
    multiple_choice_accuracy,
    perplexity,
)
from emulator.lm.models import load_model
from emulator.results import paired_difference, privacy_gap


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model("tiny-llama")


def _single_token_strings(tokenizer, token_ids: list[int]) -> list[tuple[int, str]]:
    """Tokens whose text encodes back to exactly that token, so a choice string scores exactly that token."""
    out = []
    for t in token_ids:
        text = tokenizer.decode([t])
        if text.strip() and tokenizer(text, add_special_tokens=False)["input_ids"] == [t]:
            out.append((t, text))
    return out


def _greedy_examples(model, tokenizer, n: int = 12) -> list[MCExample]:
    """Examples whose correct choice is the model's greedy next token; distractors are low-ranked tokens."""
    examples = []
    for i in range(n):
        context = f"Example {i}: the next word after this sentence is"
        ids = torch.tensor([tokenizer(context, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ranked = model(input_ids=ids).logits[0, -1].argsort(descending=True).tolist()
        best = _single_token_strings(tokenizer, ranked[:50])[0][1]
        distractors = [text for _, text in _single_token_strings(tokenizer, ranked[5000:5100])[:3]]
        label = i % 4
        choices = distractors[:label] + [best] + distractors[label:]
        examples.append(MCExample(context, tuple(choices), label))
    return examples


def test_greedy_continuation_scores_accuracy_one(tiny_llama):
    model, tokenizer = tiny_llama
    examples = _greedy_examples(model, tokenizer)
    result = multiple_choice_accuracy(model, tokenizer, examples, batch_size=5)
    assert result.acc == 1.0 and result.correct == (1,) * len(examples)
    assert result.n == len(examples) and result.acc_stderr == 0.0


def _manual_loglik(model, tokenizer, context: str, choice: str) -> float:
    ids, labels = encode_example(tokenizer, context, choice, max_length=512)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(logprobs[p - 1, ids[p]].item() for p in range(len(ids)) if labels[p] != IGNORE_INDEX)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-opt", "tiny-qwen2"])
def test_batched_logliks_match_a_manual_forward_pass(name):
    model, tokenizer = load_model(name)
    examples = synthetic_examples(3) + [
        MCExample("A much longer context, " * 6 + "so padding matters:", (" yes", " no, not at all"), 0),
        MCExample("Short:", (" a b c d e f", " g"), 1),
    ]
    for shared in (True, False):  # one context pass per example, or one pass per (context, choice)
        got = choice_logliks(model, tokenizer, examples, batch_size=3, shared_context=shared)
        for example, scores in zip(examples, got, strict=True):
            for choice, score in zip(example.choices, scores, strict=True):
                manual = _manual_loglik(model, tokenizer, example.context, choice)
                assert score == pytest.approx(manual, abs=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-opt"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_label_logprobs_loss_equals_the_models_own_loss(name, side):
    # Scoring computes logits only from the first answer column on; the labelled log-probabilities must
    # give the model's own cross-entropy whichever side the padding is on.
    model, tokenizer = load_model(name)
    examples = synthetic_examples(4) + [MCExample("A longer context, " * 5 + "then:", (" an answer",), 0)]
    encoded = [encode_example(tokenizer, e.context, e.choices[e.label], 64) for e in examples]
    batch = pad_batch(encoded, pad_token_id(tokenizer), side=side)
    with torch.no_grad():
        logprobs, scored = label_logprobs(model, batch)
        ours = -logprobs.sum() / scored.sum()
        reference = sum(
            model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            * sum(t != IGNORE_INDEX for t in labels[1:])
            for ids, labels in encoded
        ) / sum(sum(t != IGNORE_INDEX for t in labels[1:]) for _, labels in encoded)
    assert int(scored.sum()) == sum(sum(t != IGNORE_INDEX for t in labels) for _, labels in encoded)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-4)


def test_acc_norm_divides_by_choice_length_without_the_delimiter(monkeypatch, tiny_llama):
    model, tokenizer = tiny_llama
    assert [choice_length(c) for c in (" a", "\n bbb", "cc", " ")] == [1, 3, 2, 1]
    examples = [MCExample("c", (" a", " bbb"), 1), MCExample("c", (" a", " bbb"), 0)]
    # Raw sums: " a" wins. Per character without the delimiter (lm-eval): -2/1 < -5/3, " bbb" wins; counting
    # the delimiter it would not (-2/2 > -5/4).
    monkeypatch.setattr(evaluation, "choice_logliks", lambda *a, **k: [[-2.0, -5.0], [-2.0, -5.0]])
    result = multiple_choice_accuracy(model, tokenizer, examples)
    assert result.correct == (0, 1) and result.correct_norm == (1, 0)
    assert result.acc == result.acc_norm == 0.5
    assert result.acc_stderr == pytest.approx(math.sqrt(0.25 / 1))


def test_evaluation_restores_training_mode_and_rejects_empty(tiny_llama):
    model, tokenizer = tiny_llama
    model.train()
    multiple_choice_accuracy(model, tokenizer, synthetic_examples(2))
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match=r"examples is empty"):
        multiple_choice_accuracy(model, tokenizer, [])


def test_random_tiny_model_perplexity_is_huge_and_matches_the_model_loss(tiny_llama, tokenizer):
    model, _ = tiny_llama
    text = "The quick brown fox jumps over the lazy dog. " * 20
    blocks = corpus_blocks(tokenizer, text, seq_len=16)
    ppl = perplexity(model, blocks, batch_size=3)  # a batch size that does not divide N
    assert ppl > 1000
    with torch.no_grad():
        losses = [model(input_ids=b[None], labels=b[None]).loss.item() for b in blocks]
    assert ppl == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)
    with pytest.raises(ValueError, match=r"blocks has shape \(4,\)"):
        perplexity(model, torch.zeros(4, dtype=torch.long))


_PARAGRAPH = (
    "The village sits at the edge of a wide river, and most of the people who live there work on the farms "
    "around it. In the morning, the farmers walk to their fields while the children go to school. In the "
    "evening, families eat dinner together and talk about their day. On weekends, many of them go to the "
    "market in the nearby town to sell vegetables, eggs and bread."
)


@pytest.mark.slow
def test_smollm2_perplexity_on_plain_english_is_low(tokenizer):
    model, _ = load_model("smollm2-135m")
    ids = tokenizer(_PARAGRAPH, add_special_tokens=False)["input_ids"]
    assert perplexity(model, torch.tensor([ids])) < 30


def test_privacy_gap_is_plug_in_minus_emulator_fine_tuned_from_rows_or_numbers():
    assert privacy_gap({"acc": 0.5, "n": 4}, {"acc": 0.25}) == 0.25
    assert privacy_gap(0.4, 0.5) == pytest.approx(-0.1)
    assert privacy_gap(None, {"acc": 0.25}) is None and privacy_gap(0.5, None) is None


def test_paired_difference():
    mean, se = paired_difference((1, 1, 0, 0), (1, 0, 0, 1))
    assert mean == 0.0 and se == pytest.approx(math.sqrt((2 / 3) / 4))  # diffs 0, 1, 0, -1
    mean, se = paired_difference((1, 1, 1), (0, 0, 0))
    assert (mean, se) == (1.0, 0.0)
    with pytest.raises(ValueError, match=r"a has 2 and b has 1 entries"):
        paired_difference((1, 0), (1,))
