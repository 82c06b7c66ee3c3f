"""Encoding and training batches."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from emulator.data.encoding import IGNORE_INDEX, encode_example, encode_pair, start_token_id, training_batches
from emulator.data.tasks import MCExample, synthetic_examples


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_encode_example_concatenates_and_masks_the_context(tokenizer):
    context, target = "Question: What is red?\nAnswer:", " a colour"
    ids, labels = encode_example(tokenizer, context, target, max_length=64)
    n_context = len(_ids(tokenizer, context))
    assert ids == _ids(tokenizer, context) + _ids(tokenizer, target)
    assert labels[:n_context] == [IGNORE_INDEX] * n_context
    assert labels[n_context:] == _ids(tokenizer, target)


def test_encode_example_cuts_the_context_from_the_left(tokenizer):
    context, target = " ".join(f"w{i}" for i in range(100)), " end of it"
    target_ids = _ids(tokenizer, target)
    ids, labels = encode_example(tokenizer, context, target, max_length=10)
    assert len(ids) == 10
    assert ids == _ids(tokenizer, context)[-(10 - len(target_ids)) :] + target_ids
    assert labels[-len(target_ids) :] == target_ids


def test_encode_example_keeps_one_context_token_when_the_target_is_too_long(tokenizer):
    target = " one two three four five six"
    ids, labels = encode_example(tokenizer, "Context:", target, max_length=4)
    assert labels[0] == IGNORE_INDEX and labels[1:] == _ids(tokenizer, target)[:3]
    assert ids[0] == _ids(tokenizer, "Context:")[-1]


def test_encode_example_empty_context_uses_a_start_token(tokenizer):
    ids, labels = encode_example(tokenizer, "", " hello", max_length=8)
    assert ids[0] == start_token_id(tokenizer) == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
    assert ids[1:] == _ids(tokenizer, " hello")


@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer):
    """SmolLM2's tokenizer set to add BOS, as Llama's, Gemma's and Mistral's tokenizers do."""
    return AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_bos_token=True)


def test_encode_pair_splits_the_whole_string_as_lm_eval_does(tokenizer, bos_tokenizer):
    # lm-eval: trailing context whitespace moves into the continuation; the continuation is what follows the
    # context's own encoding inside the encoding of the whole string (special tokens as the tokenizer adds).
    context, target = "Question: What is red?\nAnswer: ", "a colour"
    for tok, start in ((tokenizer, []), (bos_tokenizer, [bos_tokenizer.bos_token_id])):
        context_ids, target_ids = encode_pair(tok, context, target)
        assert context_ids == start + _ids(tok, context.rstrip())
        whole = start + _ids(tok, context.rstrip() + " " + target)
        assert context_ids + target_ids == whole and target_ids == _ids(tok, " a colour")
    ids, labels = encode_example(bos_tokenizer, context, target, max_length=64)
    assert ids[0] == bos_tokenizer.bos_token_id and labels[0] == IGNORE_INDEX


def test_encode_pair_takes_the_continuation_from_the_whole_string_where_tokens_merge(tokenizer):
    # "The c" + "at sat on it" tokenizes as "The| cat| sat| on| it": the continuation is the whole string's
    # tail after as many tokens as the context alone has ("The| c"), not "at sat on it" tokenized alone.
    context, target = "The c", "at sat on it"
    whole = _ids(tokenizer, context + target)
    context_ids, target_ids = encode_pair(tokenizer, context, target)
    assert context_ids == _ids(tokenizer, context) and target_ids == whole[len(context_ids) :]
    assert target_ids != _ids(tokenizer, target)


def test_encode_example_rejects_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match=r"max_length=1 must be at least 2"):
        encode_example(tokenizer, "a", " b", max_length=1)
    with pytest.raises(ValueError, match=r"target='' tokenizes to no tokens"):
        encode_example(tokenizer, "a", "", max_length=8)


def _examples(n: int) -> list[MCExample]:
    return synthetic_examples(n)


def test_training_batches_mask_context_and_padding(tokenizer):
    examples = _examples(10)
    batches = list(training_batches(tokenizer, examples, batch_size=4, max_length=64, seed=0))
    assert sorted(b["input_ids"].shape[0] for b in batches) == [2, 4, 4]
    targets = Counter()
    for batch in batches:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert ids.dtype == mask.dtype == labels.dtype == torch.long
        for row in range(ids.shape[0]):
            length = int(mask[row].sum())
            assert mask[row, :length].all() and not mask[row, length:].any()  # right padding
            assert (labels[row, length:] == IGNORE_INDEX).all()
            learned = labels[row][labels[row] != IGNORE_INDEX].tolist()
            assert (
                learned == ids[row, length - len(learned) : length].tolist()
            )  # the target ends the sequence
            targets[tokenizer.decode(learned)] += 1
    assert targets == Counter(e.choices[e.label] for e in examples)  # each correct choice once per epoch


def test_training_batches_reshuffle_each_epoch_and_are_seeded(tokenizer):
    examples = _examples(12)

    def order(seed: int, **kw) -> list[list[int]]:
        batches = training_batches(tokenizer, examples, batch_size=12, max_length=64, seed=seed, **kw)
        return [[row[row != IGNORE_INDEX][0].item() for row in b["labels"]] for b in batches]  # target tokens

    two = order(0, epochs=2)
    assert len(two) == 2 and sorted(two[0]) == sorted(two[1]) and two[0] != two[1]
    assert order(0, epochs=2) == two and order(1, epochs=2) != two


def test_training_batches_steps_and_fractional_epochs(tokenizer):
    examples = _examples(10)
    assert len(list(training_batches(tokenizer, examples, 4, 64, seed=0, steps=7))) == 7
    assert len(list(training_batches(tokenizer, examples, 4, 64, seed=0, epochs=0.5))) == 2
    with pytest.raises(ValueError, match=r"epochs=1 and steps=3 are both set"):
        training_batches(tokenizer, examples, 4, 64, seed=0, epochs=1, steps=3)
    with pytest.raises(ValueError, match=r"batch_size=0 must be at least 1"):
        training_batches(tokenizer, examples, 0, 64, seed=0)
    with pytest.raises(ValueError, match=r"examples is empty"):
        training_batches(tokenizer, [], 4, 64, seed=0)
