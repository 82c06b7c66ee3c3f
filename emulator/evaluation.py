"""Zero-shot evaluation: multiple-choice accuracy by log-likelihood, and perplexity.

Scoring follows lm-evaluation-harness (and so Offsite-Tuning's Table 1): every choice is scored by the sum of
the log-probabilities of its tokens given the context; ``acc`` picks the highest sum, ``acc_norm`` the highest
sum divided by the choice's length in characters. Standard errors are lm-eval's ``sqrt(p(1 - p) / (n - 1))``.
Per-example correctness is kept so that two methods can be compared pairwise on the same examples.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.data import IGNORE_INDEX, encode_example, pad_batch, pad_token_id
from emulator.tasks import MCExample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MCResult:
    """Multiple-choice accuracy of one model on one list of examples.

    Attributes:
        acc: fraction of examples whose correct choice has the highest log-likelihood.
        acc_norm: the same with log-likelihoods divided by the choice's length in characters.
        acc_stderr, acc_norm_stderr: standard errors of the two means.
        n: number of examples.
        correct, correct_norm: per-example 1/0, in the order of the examples given.
    """

    acc: float
    acc_norm: float
    acc_stderr: float
    acc_norm_stderr: float
    n: int
    correct: tuple[int, ...]
    correct_norm: tuple[int, ...]


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd; the caller's training mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def choice_logliks(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[MCExample],
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
) -> list[list[float]]:
    """Log-likelihood of every choice of every example given its context.

    All (context, choice) pairs are scored in batches sorted by length, left-padded so that every sequence
    ends at the last position: the model then computes logits only for the last positions
    (``logits_to_keep``), which skips most of the vocabulary projection, the largest single matrix of a
    small model.

    Args:
        model: a causal LM (or emulator) of a supported family; runs on its own device.
        tokenizer: its tokenizer.
        examples: the examples to score.
        batch_size: sequences per forward pass.
        max_length: token budget per sequence (see ``encode_example``).
        progress: show a progress bar on stderr.

    Returns:
        ``logliks[i][j]``: the summed log-probability of choice ``j`` of example ``i``.
    """
    requests = [
        (i, j, encode_example(tokenizer, ex.context, choice, max_length))
        for i, ex in enumerate(examples)
        for j, choice in enumerate(ex.choices)
    ]
    # Longest first: similar lengths share a batch (little padding), and running out of memory shows at once.
    requests.sort(key=lambda r: -len(r[2][0]))
    logliks = [[0.0] * len(ex.choices) for ex in examples]
    batches = [requests[s : s + batch_size] for s in range(0, len(requests), batch_size)]
    from tqdm.auto import tqdm  # lazy: only needed here

    device, pad_id = _device(model), pad_token_id(tokenizer)
    with _inference(model):
        for batch in tqdm(batches, desc="scoring", disable=not progress, file=sys.stderr):
            scores = _score_batch(model, [r[2] for r in batch], pad_id, device)
            for (i, j, _), score in zip(batch, scores, strict=True):
                logliks[i][j] = score
    return logliks


def _score_batch(
    model: nn.Module, sequences: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device
) -> list[float]:
    batch = {k: v.to(device) for k, v in pad_batch(sequences, pad_id, side="left").items()}
    logprobs, scored = label_logprobs(model, batch)
    return (logprobs * scored).sum(-1).tolist()


def label_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled tokens of a batch.

    Logits are computed only from the first labelled column on. With left padding the labelled (answer)
    tokens end every row, so that is the last few positions: the model gets
    ``logits_to_keep``, which skips most of the vocabulary projection, the largest single matrix of a small
    model (on a 30-token example with a 10-token answer, two thirds of it).

    Args:
        model: a causal LM (or emulator) of a supported family.
        batch: ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not scored), (B, T); any padding
            side is correct, left padding is the cheapest.

    Returns:
        ``(logprobs, scored)``, (B, K) each: the log-probability of each label in the last K columns and
        whether that column is labelled (float 1/0); zeros where not.
    """
    mask, labels = batch["attention_mask"], batch["labels"]
    width = labels.shape[1]
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    first = int(labelled[0]) if len(labelled) else width - 1
    keep = min(width, width - first + 1)  # one more: position t predicts token t + 1
    # Explicit positions: left padding must not shift absolute position embeddings (GPT-2, OPT).
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, logits_to_keep=keep
    ).logits  # (B, keep, V): the last `keep` positions
    logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, keep - 1, V)
    targets = labels[:, -(keep - 1) :]  # (B, keep - 1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    scored = (targets != IGNORE_INDEX).to(picked.dtype)
    return picked * scored, scored


def _stderr(values: tuple[int, ...]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    p = sum(values) / n
    return math.sqrt(p * (1 - p) / (n - 1))


def multiple_choice_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[MCExample],
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
) -> MCResult:
    """Zero-shot multiple-choice accuracy, scored as lm-evaluation-harness scores it.

    Args:
        model: a causal LM (or emulator); runs on its own device, in eval mode, without gradients.
        tokenizer: its tokenizer.
        examples: the examples to score.
        batch_size: (context, choice) sequences per forward pass.
        max_length: token budget per sequence; longer contexts are cut from the left.
        progress: show a progress bar on stderr.

    Returns:
        Accuracy, length-normalised accuracy, their standard errors and per-example correctness.

    Raises:
        ValueError: no examples.
    """
    if not examples:
        raise ValueError("examples is empty; accuracy needs at least one example")
    logliks = choice_logliks(model, tokenizer, examples, batch_size, max_length, progress)
    correct, correct_norm = [], []
    for ex, scores in zip(examples, logliks, strict=True):
        normalised = [s / len(c) for s, c in zip(scores, ex.choices, strict=True)]
        # max() over indices keeps the first of tied choices, as numpy's argmax in lm-eval does.
        correct.append(int(max(range(len(scores)), key=scores.__getitem__) == ex.label))
        correct_norm.append(int(max(range(len(normalised)), key=normalised.__getitem__) == ex.label))
    n = len(examples)
    return MCResult(
        acc=sum(correct) / n,
        acc_norm=sum(correct_norm) / n,
        acc_stderr=_stderr(tuple(correct)),
        acc_norm_stderr=_stderr(tuple(correct_norm)),
        n=n,
        correct=tuple(correct),
        correct_norm=tuple(correct_norm),
    )


def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Token-level perplexity over blocks of consecutive tokens: ``exp`` of the mean next-token loss.

    Args:
        model: a causal LM (or emulator); runs on its own device, in eval mode, without gradients.
        blocks: (N, T) token ids, e.g. from ``corpus_blocks``; each block predicts its tokens 2..T.
        batch_size: blocks per forward pass.

    Raises:
        ValueError: ``blocks`` is not a non-empty (N, T) tensor with T >= 2.
    """
    if blocks.dim() != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise ValueError(f"blocks has shape {tuple(blocks.shape)}; need (N, T) with N >= 1 and T >= 2")
    device, total, count = _device(model), 0.0, 0
    with _inference(model):
        for start in range(0, blocks.shape[0], batch_size):
            ids = blocks[start : start + batch_size].to(device)  # (B, T)
            logits = model(input_ids=ids).logits[:, :-1]  # (B, T - 1, V)
            targets = ids[:, 1:]  # (B, T - 1)
            total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    return math.exp(total / count)


def paired_difference(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[float, float]:
    """Mean of ``a - b`` over the same examples and its standard error (paired: shared difficulty cancels).

    Args:
        a, b: per-example scores (e.g. ``MCResult.correct``) of two methods on the same examples.

    Returns:
        ``(mean difference, standard error)``; the error is ``stdev(a - b) / sqrt(n)``, NaN for n < 2.

    Raises:
        ValueError: the two have different lengths or are empty.
    """
    if len(a) != len(b) or not a:
        raise ValueError(
            f"a has {len(a)} and b has {len(b)} entries; need the same non-zero number of examples"
        )
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(variance / n)
