"""Zero-shot evaluation: multiple-choice accuracy by log-likelihood, and perplexity.

Scoring follows lm-evaluation-harness (and so Offsite-Tuning's Table 1): every choice is scored by the sum of
the log-probabilities of its tokens given the context, encoded as lm-eval encodes them (``data.encode_pair``);
``acc`` picks the highest sum, ``acc_norm`` the highest sum divided by the choice's length in characters
without its delimiter (``choice_length``). Standard errors are lm-eval's ``sqrt(p(1 - p) / (n - 1))``.
``tests/emulator/evaluation/test_lm_eval_conformance.py`` checks both against lm-eval's own ``HFLM`` on the
same examples. Per-example correctness is kept so that two methods can be compared pairwise on the same
examples.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.data.encoding import IGNORE_INDEX, encode_example, pad_batch, pad_token_id
from emulator.data.tasks import MCExample
from emulator.lm.architectures import backbone, head_logits
from emulator.results import MCResult

log = logging.getLogger(__name__)


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
    trim_logits: bool = True,
    bucketed: bool = True,
) -> list[list[float]]:
    """Log-likelihood of every choice of every example given its context.

    With ``shared_context`` (the default), an example's context runs through the model once and its KV cache
    serves all of its choices: on a 4-choice task whose context is longer than its choices, that halves the
    tokens scored. Otherwise (and for an example whose choices do not share one context prefix, which only
    truncation causes) every (context, choice) pair is scored whole, left-padded. Either way the LM head runs
    only on the positions whose log-probability is summed. Both ways give the same numbers.
    Batches are length-bucketed (``shared_groups``; pairs sorted by length), longest first: little padding,
    and running out of memory shows at once.

    Args:
        model: a causal LM (or emulator) of a supported family; runs on its own device.
        tokenizer: its tokenizer.
        examples: the examples to score.
        batch_size: sequences per forward pass: contexts of a shared-context pass, choices of the passes
            that follow it, (context, choice) pairs otherwise.
        max_length: token budget per sequence (see ``encode_example``).
        progress: show a progress bar on stderr when it is a terminal.
        shared_context: score each context once (KV cache) rather than once per choice.
        trim_logits: run the LM head only on the positions whose log-probability is summed; False runs it on
            every position (the same numbers; for benchmarks).
        bucketed: length-bucketed shared-context groups (``shared_groups``); False: the former packing.

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
    groups = shared_groups([encoded[i] for i in shared], shared, batch_size, bucketed)
    batches = [("shared", group) for group in groups]
    single.sort(key=lambda r: -len(encoded[r[0]][r[1]][0]))  # longest first: little padding
    batches += [("single", single[s : s + batch_size]) for s in range(0, len(single), batch_size)]
    from tqdm.auto import tqdm  # lazy: only needed here

    device, pad_id = _device(model), pad_token_id(tokenizer)
    with _inference(model):
        for kind, batch in tqdm(batches, desc="scoring", disable=None if progress else True, file=sys.stderr):
            if kind == "shared":
                group = [encoded[i] for i in batch]
                rows = batch_size if bucketed else sum(len(pairs) for pairs in group)  # former: one pass
                scores = _score_shared(model, group, pad_id, device, rows, trim_logits)
                for i, example_scores in zip(batch, scores, strict=True):
                    logliks[i] = example_scores
            else:
                scores = _score_batch(model, [encoded[i][j] for i, j in batch], pad_id, device, trim_logits)
                for (i, j), score in zip(batch, scores, strict=True):
                    logliks[i][j] = score
    return logliks


def shared_groups(
    encoded: list[list[tuple[list[int], list[int]]]], names: list[int], batch_size: int, bucketed: bool = True
) -> list[list[int]]:
    """Groups of shared-context examples, one context pass each; deterministic.

    Bucketed: examples ordered by their longest choice, then their context length (longest first, ties in
    the given order), cut into groups of ``batch_size``, so that the length-sorted choice passes of
    ``_score_shared`` carry little padding. Otherwise (the former packing, for benchmarks): ordered by
    longest sequence, whole examples added while their choices fit in ``batch_size`` rows.

    Args:
        encoded: each example's encoded (context, choice) pairs, as ``encode_example`` returns them.
        names: the examples' identifiers, parallel to ``encoded``.
        batch_size: contexts per group (bucketed) or choices per group.

    Returns:
        The identifiers, grouped; every one exactly once.
    """

    def lengths(k: int) -> tuple[int, int]:  # (longest choice, context) of example k, in tokens
        context = encoded[k][0][1].count(IGNORE_INDEX)
        return max(len(ids) for ids, _ in encoded[k]) - context, context

    if bucketed:
        order = sorted(range(len(encoded)), key=lambda k: tuple(-n for n in lengths(k)))
        return [[names[k] for k in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
    groups: list[list[int]] = []
    rows = batch_size  # choices in the last group
    for k in sorted(range(len(encoded)), key=lambda k: -sum(lengths(k))):
        if rows + len(encoded[k]) > batch_size:
            groups.append([])
            rows = 0
        groups[-1].append(names[k])
        rows += len(encoded[k])
    return groups


def _score_shared(
    model: nn.Module,
    examples: list[list[tuple[list[int], list[int]]]],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    trim_logits: bool = True,
) -> list[list[float]]:
    """Scores of every choice of ``examples`` (each a list of encoded pairs sharing one context prefix).

    One pass over the contexts (logits at their last position only), then the choices, sorted by length, in
    passes of ``batch_size`` rows, each on a copy of the cache holding its rows' contexts.
    """
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
    owners = [e for e, pairs in enumerate(examples) for _ in pairs]
    targets = [ids[labels.count(IGNORE_INDEX) :] for pairs in examples for ids, labels in pairs]
    order = sorted(range(len(targets)), key=lambda r: -len(targets[r]))
    totals = [0.0] * len(targets)
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        owner = torch.tensor([owners[r] for r in rows], device=device)
        cache = copy.deepcopy(out.cache)  # select_indices replaces the tensors of this copy only
        cache.batch_select_indices(owner)
        choices = pad_batch([(targets[r], targets[r]) for r in rows], pad_id, side="right")
        ids, choice_mask = choices["input_ids"].to(device), choices["attention_mask"].to(device)
        width = ids.shape[1]
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.cat([mask[owner], choice_mask], dim=-1),
            "position_ids": mask.sum(-1)[owner].unsqueeze(-1) + torch.arange(width, device=device),
            "cache": cache,
        }
        # Position t predicts choice token t + 1; the last position and the padding predict nothing.
        following = ids[:, 1:].masked_fill(choice_mask[:, 1:] == 0, IGNORE_INDEX)
        following = F.pad(following, (0, 1), value=IGNORE_INDEX)  # (r, width)
        rest = next_token_logprobs(model, inputs, following, trim_logits)  # (r, width)
        head = first[owner].gather(-1, ids[:, :1]).squeeze(-1)  # (r,)
        for r, total in zip(rows, (head + rest.sum(-1)).tolist(), strict=True):
            totals[r] = total
    scores, row = [], 0
    for pairs in examples:
        scores.append(totals[row : row + len(pairs)])
        row += len(pairs)
    return scores


def _score_batch(
    model: nn.Module,
    sequences: list[tuple[list[int], list[int]]],
    pad_id: int,
    device: torch.device,
    trim_logits: bool = True,
) -> list[float]:
    batch = {k: v.to(device) for k, v in pad_batch(sequences, pad_id, side="left").items()}
    logprobs, scored = label_logprobs(model, batch, trim_logits)
    return (logprobs * scored).sum(-1).tolist()


def next_token_logprobs(
    model: nn.Module, inputs: dict[str, Any], targets: torch.Tensor, trim_logits: bool = True
) -> torch.Tensor:
    """Log-probability, at every position, of the token it should predict.

    Args:
        model: a causal LM (or emulator) of a supported family.
        inputs: keyword arguments of its forward pass (``input_ids`` (B, T), masks, positions, cache).
        targets: (B, T) the token each position predicts, -100 where none.
        trim_logits: run the LM head only where a target is (``head_logits``); False runs the whole model
            (logits at every position: the same numbers, slower; for benchmarks).

    Returns:
        (B, T) fp32 log-probabilities, 0 where the target is -100.
    """
    keep = targets != IGNORE_INDEX
    picked = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    if trim_logits:
        hidden = backbone(model)(**inputs).last_hidden_state  # (B, T, H)
        logits = head_logits(model, hidden, keep).float()  # (N, V)
        picked[keep] = logits.log_softmax(-1).gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
        return picked
    logprobs = model(**inputs).logits.float().log_softmax(-1)  # (B, T, V)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * keep


def label_logprobs(
    model: nn.Module, batch: dict[str, torch.Tensor], trim_logits: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled tokens of a batch.

    The LM head runs only at the positions that predict a labelled token (``next_token_logprobs``), the
    largest single matrix of a small model (on a 30-token example with a 10-token answer, two thirds of it).

    Args:
        model: a causal LM (or emulator) of a supported family.
        batch: ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not scored), (B, T); either
            padding side is correct.
        trim_logits: see ``next_token_logprobs``.

    Returns:
        ``(logprobs, scored)``, (B, T - 1) each: column t holds the log-probability of label t + 1 and
        whether that label is scored (float 1/0); zeros where not.
    """
    mask, labels = batch["attention_mask"], batch["labels"]
    # Explicit positions: left padding must not shift absolute position embeddings (GPT-2, OPT).
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
    }
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T): position t predicts label t + 1
    picked = next_token_logprobs(model, inputs, targets, trim_logits)[:, :-1]
    scored = (labels[:, 1:] != IGNORE_INDEX).to(picked.dtype)
    return picked, scored


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
        Accuracy, length-normalised accuracy, their standard errors, per-example correctness and the
        choice ``acc`` picked for each example.

    Raises:
        ValueError: no examples.
    """
    if not examples:
        raise ValueError("examples is empty; accuracy needs at least one example")
    logliks = choice_logliks(model, tokenizer, examples, batch_size, max_length, progress)
    correct, correct_norm, predicted = [], [], []
    for ex, scores in zip(examples, logliks, strict=True):
        normalised = [s / choice_length(c) for s, c in zip(scores, ex.choices, strict=True)]
        # max() over indices keeps the first of tied choices, as numpy's argmax in lm-eval does.
        predicted.append(max(range(len(scores)), key=scores.__getitem__))
        correct.append(int(predicted[-1] == ex.label))
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
        predicted=tuple(predicted),
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
