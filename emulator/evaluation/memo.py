"""Zero-shot accuracy memoised on disk: a model scored once on a test set serves every later run.

The full model's zero-shot row is the same for every method of ``scaleot compare``, for the demo and for
``scaleot eval``; scoring it costs minutes on a CPU. Results are stored under
``emulator.lm.models.cache_dir() / "zero-shot"``, one JSON file per key, and the key is a hash of everything
the numbers depend on: the model's weights and config, the tokenizer's vocabulary, the examples themselves
(so the task, split, limit and split seed), the token budget, and ``SCORING_VERSION``. A changed model or
split therefore misses the memo instead of reading a stale result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.data.tasks import MCExample
from emulator.evaluation.scoring import multiple_choice_accuracy
from emulator.files import read_json, write_text
from emulator.lm.models import cache_dir, model_fingerprint
from emulator.results import MCResult

log = logging.getLogger(__name__)

# Bump whenever the numbers ``multiple_choice_accuracy`` returns for the same model and examples change
# (encoding of contexts and choices, BOS handling, normalisation): memoised results of older versions are
# then ignored.
SCORING_VERSION = 3  # 2: the predicted choice per example; 3: lm-eval encoding and acc_norm


def memo_key(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[MCExample],
    max_length: int,
    model_sha256: str | None = None,
) -> str:
    """The memo key of scoring ``model`` on ``examples`` (see the module docstring for what it covers);
    ``model_sha256`` is ``model_fingerprint(model)`` when the caller has it (hashing takes seconds)."""
    spec = {
        "model": model_sha256 or model_fingerprint(model),
        "vocab": hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest(),
        "examples": [[ex.context, list(ex.choices), ex.label] for ex in examples],
        "max_length": max_length,
        "scoring": SCORING_VERSION,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def memoised_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[MCExample],
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
    directory: Path | None = None,
    model_sha256: str | None = None,
) -> MCResult:
    """``multiple_choice_accuracy``, read from the memo when this model was scored on these examples before.

    Args:
        model, tokenizer, examples, batch_size, max_length, progress: as ``multiple_choice_accuracy``
            (``batch_size`` does not enter the key: it changes the speed, not the result).
        directory: where memo files live; default ``cache_dir() / "zero-shot"``.
        model_sha256: ``model_fingerprint(model)`` if the caller has it (else computed here).

    A memo file that cannot be read (truncated, say) is named in a warning, and the examples are scored
    again and the file rewritten.

    Raises:
        ValueError: no examples.
        FileWriteError: the memo could not be written.
    """
    if not examples:
        raise ValueError("examples is empty; accuracy needs at least one example")
    directory = directory or cache_dir() / "zero-shot"
    path = directory / f"{memo_key(model, tokenizer, examples, max_length, model_sha256)}.json"
    if path.is_file():
        try:
            values = read_json(path)
            result = MCResult.from_row(values)
            log.info("zero-shot of %d examples: memoised in %s", len(examples), path)
            return result
        # Damaged (truncated, or not a row): scored again, then rewritten.
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            log.warning("ignoring the zero-shot memo %s: %s", path, " ".join(str(error).split()))
    result = multiple_choice_accuracy(model, tokenizer, examples, batch_size, max_length, progress)
    directory.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(result.to_row()))  # atomic: a reader never sees half a file
    return result
