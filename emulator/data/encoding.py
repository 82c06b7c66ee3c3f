"""Tokenisation and batching for adapter training and evaluation.

Task examples are encoded as lm-evaluation-harness encodes a (context, continuation) request for a causal LM
(``encode_pair``), with the loss only on the target, as Offsite-Tuning trains (``offsite_tuning/data.py``):
training and log-likelihood scoring see the same token ids, including the BOS token of tokenizers that add
one.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from emulator.data.tasks import MCExample

log = logging.getLogger(__name__)


IGNORE_INDEX = -100  # label value that torch's cross-entropy (and HF's loss) skips


def _lm_eval_encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` with the tokenizer's own special-token settings (a BOS where they add one), as
    lm-evaluation-harness's ``HFLM.tok_encode``; a text that already starts with the start token gets none."""
    if text.startswith(tokenizer.decode([start_token_id(tokenizer)])):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token an empty context is replaced with: BOS, or EOS where there is none (lm-eval's
    ``prefix_token_id``)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, target: str) -> tuple[list[int], list[int]]:
    """Context and target token ids, split as lm-evaluation-harness splits them for a causal LM.

    Trailing whitespace of the context moves to the front of the target; then the whole string
    ``context + target`` is encoded and the target is what follows the context's own encoding
    (``LM._encode_pair``). Both encodings keep the tokenizer's special tokens, so the context starts with BOS
    where the tokenizer adds one (Llama, Gemma, Mistral) and with nothing where it does not (GPT-2, SmolLM2).
    An empty context becomes ``[start_token_id]`` and the target is encoded alone, without special tokens.

    Returns:
        ``(context_ids, target_ids)``; ``context_ids`` depends on the context alone, so every choice of a
        multiple-choice example shares it.
    """
    stripped = context.rstrip()
    target = context[len(stripped) :] + target
    if not stripped:
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        start = start_token_id(tokenizer)
        # lm-eval: a target that begins with the start token supplies it as its own context.
        return (target_ids[:1], target_ids[1:]) if target_ids[:1] == [start] else ([start], target_ids)
    context_ids = _lm_eval_encode(tokenizer, stripped)
    return context_ids, _lm_eval_encode(tokenizer, stripped + target)[len(context_ids) :]


def encode_example(
    tokenizer: PreTrainedTokenizerBase, context: str, target: str, max_length: int
) -> tuple[list[int], list[int]]:
    """Encode one (context, target) pair for a causal LM, as ``encode_pair`` splits it.

    Args:
        tokenizer: the model's tokenizer.
        context: prompt text; carries no loss.
        target: continuation to learn or score.
        max_length: maximum total tokens. The context is cut from the left when too long; a target longer than
            ``max_length - 1`` tokens is cut from the right, so at least one context token always remains.

    Returns:
        ``(input_ids, labels)`` of equal length; labels are ``-100`` on the context, the target ids after.

    Raises:
        ValueError: ``max_length`` below 2, or a target that tokenizes to nothing.
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 (one context and one target token)")
    context_ids, target_ids = encode_pair(tokenizer, context, target)
    target_ids = target_ids[: max_length - 1]
    if not target_ids:
        raise ValueError(f"target={target!r} tokenizes to no tokens; every choice needs at least one")
    prefix = context_ids[-(max_length - len(target_ids)) :]
    return prefix + target_ids, [IGNORE_INDEX] * len(prefix) + target_ids


def pad_batch(
    sequences: list[tuple[list[int], list[int]]], pad_id: int, side: Literal["right", "left"] = "right"
) -> dict[str, torch.Tensor]:
    """Pad encoded examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors of shape (B, T).

    Args:
        sequences: ``(input_ids, labels)`` pairs as ``encode_example`` returns them.
        pad_id: token id written into padding (masked out, and labelled ``-100``).
        side: where the padding goes; training uses the right, scoring the left (see ``evaluation``).
    """
    width = max(len(ids) for ids, _ in sequences)
    batch = {
        "input_ids": torch.full((len(sequences), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(sequences), width), dtype=torch.long),
        "labels": torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long),
    }
    for row, (ids, labels) in enumerate(sequences):
        span = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        batch["input_ids"][row, span] = torch.tensor(ids)
        batch["attention_mask"][row, span] = 1
        batch["labels"][row, span] = torch.tensor(labels)
    return batch


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, or its EOS id where it has none (GPT-2, SmolLM2); padding is masked anyway."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def training_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[MCExample],
    batch_size: int,
    max_length: int,
    seed: int,
    epochs: float | None = None,
    steps: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded, length-bucketed batches of (context, correct choice), reshuffled every epoch.

    Args:
        tokenizer: the model's tokenizer.
        examples: training examples; the target is each example's correct choice.
        batch_size: examples per batch; one batch per epoch (the last of its bucket) may be smaller.
        max_length: token budget per example (see ``encode_example``).
        seed: shuffling seed; epoch ``e``'s batches are ``bucketed_order`` with seed ``(seed, e)``.
        epochs: passes over the data (fractions allowed: 0.5 stops halfway through the first pass).
        steps: number of batches instead; cycles through further epochs as needed. Default: one epoch.

    Returns:
        An iterator of dicts of ``input_ids``, ``attention_mask`` and ``labels``, each (B, T) ``torch.long``.

    Raises:
        ValueError: no examples, a non-positive batch size / epochs / steps, or both ``epochs`` and ``steps``.
    """
    if not examples:
        raise ValueError("examples is empty; training needs at least one example")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if epochs is not None and steps is not None:
        raise ValueError(f"epochs={epochs} and steps={steps} are both set; give one of them")
    per_epoch = math.ceil(len(examples) / batch_size)
    if steps is None:
        steps = math.ceil((1.0 if epochs is None else epochs) * per_epoch)
    if steps < 1:
        raise ValueError(f"epochs={epochs} / steps={steps} must give at least one batch")
    encoded = [encode_example(tokenizer, ex.context, ex.choices[ex.label], max_length) for ex in examples]
    return _batches(encoded, batch_size, seed, steps, pad_token_id(tokenizer))


def _batches(
    encoded: list[tuple[list[int], list[int]]], batch_size: int, seed: int, steps: int, pad_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    epoch = 0
    while True:
        for rows in bucketed_order([len(ids) for ids, _ in encoded], batch_size, f"{seed}-{epoch}"):
            yield pad_batch([encoded[i] for i in rows], pad_id)
            steps -= 1
            if steps == 0:
                return
        epoch += 1


BUCKET_BATCHES = 8  # batches per length bucket: enough to sort by, few enough to keep the order random


def bucketed_order(lengths: list[int], batch_size: int, seed: str) -> list[list[int]]:
    """One epoch of length-bucketed batches: every index of ``lengths`` exactly once, seeded.

    The indices are shuffled, cut into buckets of ``BUCKET_BATCHES * batch_size``, each bucket sorted by
    length and cut into batches, and the batches of all buckets shuffled again: each batch holds examples of
    similar length (little padding), while which examples meet, and in which order, stays random.

    Args:
        lengths: token count of each example.
        batch_size: examples per batch; a bucket's last batch may be smaller.
        seed: shuffling seed (a string: Python hashes it deterministically, with sha512).

    Returns:
        The batches, as lists of indices into ``lengths``.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = BUCKET_BATCHES * batch_size
    batches = []
    for start in range(0, len(order), span):
        bucket = sorted(order[start : start + span], key=lengths.__getitem__)  # stable: ties stay shuffled
        batches += [bucket[s : s + batch_size] for s in range(0, len(bucket), batch_size)]
    rng.shuffle(batches)
    return batches
