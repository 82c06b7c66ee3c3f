"""Zero-shot evaluation: multiple-choice accuracy by log-likelihood, and perplexity.

Scoring follows lm-evaluation-harness (and so Offsite-Tuning's Table 1): every choice is scored by the sum of
the log-probabilities of its tokens given the context, encoded as lm-eval encodes them (``data.encode_pair``);
``acc`` picks the highest sum, ``acc_norm`` the highest sum divided by the choice's length in characters
without its delimiter (``choice_length``). Standard errors are lm-eval's ``sqrt(p(1 - p) / (n - 1))``.
``tests/test_lm_eval_conformance.py`` checks both against lm-eval's own ``HFLM`` on the same examples.
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
        acc_norm: the same with log-likelihoods divided by ``choice_length`` of each choice.
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
    shared_context: bool = True,
) -> list[list[float]]:
    """Log-likelihood of every choice of every example given its context.

    With ``shared_context`` (the default), an example's context runs through the model once and its KV cache
    serves all of its choices: on a 4-choice task whose context is longer than its choices, that halves the
    tokens scored. Otherwise (and for an example whose choices do not share one context prefix, which only
    truncation causes) every (context, choice) pair is scored whole, left-padded so that it ends at the last
    position and the model computes logits only there (``logits_to_keep``). Both ways give the same numbers.
    Batches are sorted by length: little padding, and running out of memory shows at once.

    Args:
        model: a causal LM (or emulator) of a supported family; runs on its own device.
        tokenizer: its tokenizer.
        examples: the examples to score.
        batch_size: (context, choice) sequences per forward pass; a shared-context pass holds as many whole
            examples as fit, at least one.
        max_length: token budget per sequence (see ``encode_example``).
        progress: show a progress bar on stderr when it is a terminal.
        shared_context: score each context once (KV cache) rather than once per choice.

    Returns:
        ``logliks[i][j]``: the summed log-probability of choice ``j`` of example ``i``.
    """
    encoded = [[encode_example(tokenizer, ex.context, c, max_length) for c in ex.choices] for ex in examples]
    shared, single = [], []
    for i, pairs in enumerate(encoded):
        one_context = len({tuple(ids[: labels.count(IGNORE_INDEX)]) for ids, labels in pairs}) == 1
        if shared_context and one_context:
            shared.append(i)
        else:
            single.extend((i, j) for j in range(len(pairs)))
    logliks = [[0.0] * len(ex.choices) for ex in examples]
    batches: list[tuple[str, list]] = []
    # Longest first, for both kinds of batch.
    shared.sort(key=lambda i: -max(len(ids) for ids, _ in encoded[i]))
    group: list[int] = []
    rows = 0  # choices in `group`
    for i in shared:
        if group and rows + len(encoded[i]) > batch_size:
            batches.append(("shared", group))
            group, rows = [], 0
        group.append(i)
        rows += len(encoded[i])
    if group:
        batches.append(("shared", group))
    single.sort(key=lambda r: -len(encoded[r[0]][r[1]][0]))
    batches += [("single", single[s : s + batch_size]) for s in range(0, len(single), batch_size)]
    from tqdm.auto import tqdm  # lazy: only needed here

    device, pad_id = _device(model), pad_token_id(tokenizer)
    with _inference(model):
        for kind, batch in tqdm(batches, desc="scoring", disable=None if progress else True, file=sys.stderr):
            if kind == "shared":
                scores = _score_shared(model, [encoded[i] for i in batch], pad_id, device)
                for i, example_scores in zip(batch, scores, strict=True):
                    logliks[i] = example_scores
            else:
                scores = _score_batch(model, [encoded[i][j] for i, j in batch], pad_id, device)
                for (i, j), score in zip(batch, scores, strict=True):
                    logliks[i][j] = score
    return logliks


def _score_shared(
    model: nn.Module, examples: list[list[tuple[list[int], list[int]]]], pad_id: int, device: torch.device
) -> list[list[float]]:
    """Scores of every choice of ``examples`` (each a list of encoded pairs sharing one context prefix)."""
    contexts = [pairs[0][0][: pairs[0][1].count(IGNORE_INDEX)] for pairs in examples]
    batch = pad_batch([(c, [IGNORE_INDEX] * len(c)) for c in contexts], pad_id, side="left")
    mask = batch["attention_mask"].to(device)
    out = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    first = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # (E, V): each choice's first token
    # One row per choice: the cache of its example's context, then the choice's tokens, right-padded.
    owner = torch.tensor([e for e, pairs in enumerate(examples) for _ in pairs], device=device)
    targets = [ids[labels.count(IGNORE_INDEX) :] for pairs in examples for ids, labels in pairs]
    cache = out.cache
    cache.batch_select_indices(owner)
    choices = pad_batch([(t, t) for t in targets], pad_id, side="right")
    ids, choice_mask = choices["input_ids"].to(device), choices["attention_mask"].to(device)
    positions = mask.sum(-1)[owner].unsqueeze(-1) + torch.arange(ids.shape[1], device=device)  # after context
    logits = model(
        input_ids=ids,
        attention_mask=torch.cat([mask[owner], choice_mask], dim=-1),
        position_ids=positions,
        cache=cache,
    ).logits  # (R, width, V): position t predicts choice token t + 1
    rest = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    head = first[owner].gather(-1, ids[:, :1]).squeeze(-1)  # (R,)
    totals = (head + (rest * choice_mask[:, 1:]).sum(-1)).tolist()
    scores, row = [], 0
    for pairs in examples:
        scores.append(totals[row : row + len(pairs)])
        row += len(pairs)
    return scores


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


def choice_length(choice: str) -> int:
    """Characters of a choice without its delimiter, the ``acc_norm`` denominator.

    An ``MCExample`` choice starts with its delimiter (the whitespace between context and answer, e.g. " ");
    lm-eval keeps the delimiter apart (``target_delimiter``) and divides by the length of the choice alone
    (``ConfigurableTask.process_results``), so leading whitespace does not count. At least 1: a choice that is
    only whitespace would otherwise divide by zero.
    """
    return max(len(choice.lstrip()), 1)


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
        progress: show a progress bar on stderr when it is a terminal.

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
        normalised = [s / choice_length(c) for s, c in zip(scores, ex.choices, strict=True)]
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
