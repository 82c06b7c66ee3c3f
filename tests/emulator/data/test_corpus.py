"""The public corpus: deterministic splits, its loaders, consecutive token blocks and their batches."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, DatasetDict

from emulator.data.corpus import corpus_blocks, public_batches, public_corpus


def test_pydoc_corpus_splits_are_disjoint_deterministic_and_english():
    from pydoc_data.topics import topics

    train, validation = public_corpus("train"), public_corpus("validation")
    assert train == public_corpus("train")
    assert len(train) > 5 * len(validation) > 0
    assert all((text.strip() in train) != (text.strip() in validation) for text in topics.values())
    assert " the " in train


def test_wikitext_corpus_through_a_given_loader():
    def load(path: str, config: str) -> DatasetDict:
        assert (path, config) == ("wikitext", "wikitext-2-raw-v1")
        rows = {"train": [" = A = \n", " text one \n"], "validation": [" more \n"], "test": [" t \n"]}
        return DatasetDict({k: Dataset.from_dict({"text": v}) for k, v in rows.items()})

    assert public_corpus("train", "wikitext", load_dataset_fn=load) == " = A = \n text one \n"
    with pytest.raises(ValueError, match=r"corpus name='books' is unknown; use one of wikipedia, wikitext"):
        public_corpus("train", "books")
    with pytest.raises(ValueError, match=r"split='test' is unknown"):
        public_corpus("test")  # type: ignore[arg-type]


def test_corpus_blocks_are_consecutive_tokens(tokenizer):
    text = public_corpus("validation")
    blocks = corpus_blocks(tokenizer, text, seq_len=32)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert blocks.dtype == torch.long and blocks.shape == (len(ids) // 32, 32)
    assert blocks.flatten().tolist() == ids[: blocks.numel()]
    with pytest.raises(ValueError, match=r"fewer than one block of seq_len=32"):
        corpus_blocks(tokenizer, "too short", seq_len=32)


def test_public_batches_serve_each_block_once_per_epoch_and_refuse_none():
    blocks = torch.arange(10 * 3).view(10, 3)
    batches = public_batches(blocks, 4, torch.Generator().manual_seed(0))
    epoch = [next(batches) for _ in range(2)]  # 10 blocks: two batches of 4, the partial third dropped
    rows = [tuple(row.tolist()) for batch in epoch for row in batch]
    assert all(batch.shape == (4, 3) for batch in epoch)
    assert len(set(rows)) == 8 and set(rows) <= {tuple(row.tolist()) for row in blocks}
    with pytest.raises(ValueError, match="the public corpus gave no token blocks"):
        next(public_batches(blocks[:0], 4, torch.Generator()))
