"""Tokenisation and batching for adapter training, emulator building and evaluation.

Task examples are encoded as Offsite-Tuning does (``offsite_tuning/data.py``):
``ids = tok(context) + tok(target)`` with the loss only on the target. Context and target are tokenized
separately, without special tokens, as lm-evaluation-harness does for causal LMs, so that training and
log-likelihood scoring see the same token ids.

The public corpus (stage 1 of ScaleOT: harmonizers and layer importance) is plain text cut into blocks of
consecutive tokens. Offline default: English prose from the cached BIG-bench archive without the evaluated
task (``emulator.english_corpus``); also offline: Python's ``pydoc_data`` topics; online: WikiText-2.
"""

from __future__ import annotations

import logging
import math
import random
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from emulator.tasks import MCExample

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and HF's loss) skips
CORPORA = ("bigbench", "pydoc", "wikitext")


def context_ids(tokenizer: PreTrainedTokenizerBase, context: str) -> list[int]:
    """Token ids of a context; an empty context becomes the EOS (or BOS) token so the first target token has a
    position to be predicted from, as in lm-evaluation-harness."""
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    if not ids:
        fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        ids = [fallback]
    return ids


def encode_example(
    tokenizer: PreTrainedTokenizerBase, context: str, target: str, max_length: int
) -> tuple[list[int], list[int]]:
    """Encode one (context, target) pair for a causal LM.

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
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"][: max_length - 1]
    if not target_ids:
        raise ValueError(f"target={target!r} tokenizes to no tokens; every choice needs at least one")
    prefix = context_ids(tokenizer, context)[-(max_length - len(target_ids)) :]
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
    """Right-padded batches of (context, correct choice), reshuffled every epoch.

    Args:
        tokenizer: the model's tokenizer.
        examples: training examples; the target is each example's correct choice.
        batch_size: examples per batch; the last batch of an epoch may be smaller.
        max_length: token budget per example (see ``encode_example``).
        seed: shuffling seed; epoch ``e`` uses a permutation derived from ``(seed, e)``.
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
        order = list(range(len(encoded)))
        random.Random(f"{seed}-{epoch}").shuffle(order)  # string seeds hash deterministically (sha512)
        for start in range(0, len(order), batch_size):
            yield pad_batch([encoded[i] for i in order[start : start + batch_size]], pad_id)
            steps -= 1
            if steps == 0:
                return
        epoch += 1


def public_corpus(
    split: Literal["train", "validation"],
    name: str = "pydoc",
    *,
    exclude: str = "",
    load_dataset_fn: Callable[[str, str], Any] | None = None,
) -> str:
    """Text of the public corpus used to build emulators.

    Args:
        split: ``train`` or ``validation``.
        name: ``bigbench`` (offline English prose of BIG-bench, see ``emulator.english_corpus``), ``pydoc``
            (offline: Python's ``pydoc_data`` topics; a topic goes to validation when the CRC32 of its key is
            divisible by 10, about 10 %) or ``wikitext`` (online: WikiText-2 raw).
        exclude: ``bigbench`` only: the BIG-bench task evaluated, left out and checked absent by content.
        load_dataset_fn: loader for ``wikitext``; ``datasets.load_dataset`` by default (tests pass their own).

    Returns:
        The split's text as one string.

    Raises:
        ValueError: unknown split or corpus name, WikiText unreachable, or the excluded task's text found in
            the ``bigbench`` corpus.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r} is unknown; use 'train' or 'validation'")
    if name == "bigbench":
        from emulator.english_corpus import bigbench_corpus

        return bigbench_corpus(split, exclude)
    if name == "pydoc":
        from pydoc_data.topics import topics

        # crc32, not hash(): Python salts str hashes per process, and the split must not change between runs.
        keys = [k for k in sorted(topics) if (zlib.crc32(k.encode()) % 10 == 0) == (split == "validation")]
        return "\n\n".join(topics[k].strip() for k in keys)
    if name == "wikitext":
        return _wikitext(split, load_dataset_fn)
    raise ValueError(f"corpus name={name!r} is unknown; use one of {', '.join(CORPORA)}")


def _wikitext(split: str, load_dataset_fn: Callable[[str, str], Any] | None) -> str:
    if load_dataset_fn is None:
        from datasets import load_dataset  # lazy: importing datasets costs seconds

        load_dataset_fn = load_dataset
    try:
        data = load_dataset_fn("wikitext", "wikitext-2-raw-v1")
    except Exception as error:  # datasets raises many types offline; all mean the same thing to a user
        raise ValueError(
            f"corpus 'wikitext' needs the hub dataset wikitext ({type(error).__name__}); go online, or use "
            "the offline corpus 'pydoc'"
        ) from error
    return "".join(data[split]["text"])  # lines keep their own newlines


def corpus_blocks(tokenizer: PreTrainedTokenizerBase, text: str, seq_len: int) -> torch.Tensor:
    """Cut a text into consecutive blocks of ``seq_len`` tokens; the incomplete tail is dropped.

    Returns:
        A (N, seq_len) ``torch.long`` tensor.

    Raises:
        ValueError: ``seq_len`` below 2, or a text shorter than one block.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2")
    # verbose=False: the text is far longer than the model's context on purpose; no need to warn about it.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one block of seq_len={seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
