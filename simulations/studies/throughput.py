"""Matmul throughput, the FLOPs each phase needs, scoring throughput (``simulations.studies.benchmark``).

A phase's *needed* FLOPs count only the work whose result is used: every decoder-block matrix a token
passes through (``2·P_body`` per token forward, as many again backward for the gradient flowing down to the
bottom adapter, ``2·P_adapter`` for the adapter's own weight gradients) and the LM head only where a
log-probability is used (training: the labelled positions; scoring: each context's last position and the
positions inside a choice). Attention scores, norms and activations are left out. A measured phase is then
reported as ``needed FLOPs / seconds``, as a fraction of the machine's fp32 GEMM throughput on the model's
own matrix shapes: a path that wastes work (logits nobody reads, padding) shows a lower fraction.
No flwr or Ray import: the benchmark runs on a machine with torch and transformers only.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.data.encoding import IGNORE_INDEX, encode_example
from emulator.data.tasks import load_task
from emulator.evaluation.scoring import choice_logliks

log = logging.getLogger("scaleot.benchmark")


def matrix_params(model: nn.Module) -> tuple[int, int]:
    """``(P_body, P_head)``: parameters a token is multiplied by in the decoder (norms and biases included,
    the input embedding, a lookup, excluded) and in the LM head."""
    head = model.get_output_embeddings().weight.numel()
    embedding = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - embedding - (0 if tied else head), head


def gemm_throughput(model: nn.Module, tokens: int, repeats: int = 3) -> float:
    """FLOP/s of ``x @ W.T`` (x: ``tokens`` rows) over the model's linear shapes, weighted by their count.

    Each distinct (d_in, d_out) shape is timed ``repeats`` times (best kept) on the model's device; the
    result is the sum of the FLOPs of all the model's matrices over the sum of their times.
    """
    shapes = Counter(
        tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear) and m.weight.dim() == 2
    )
    device = next(model.parameters()).device
    flops = seconds = 0.0
    for (d_out, d_in), count in shapes.items():
        x = torch.randn(tokens, d_in, device=device)
        w = torch.randn(d_out, d_in, device=device)
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            x @ w.T
            _sync(device)
            best = min(best, time.perf_counter() - start)
        flops += count * 2.0 * tokens * d_in * d_out
        seconds += count * best
    return flops / seconds


def training_flops(model: nn.Module, tokens: int, scored: int) -> float:
    """Needed FLOPs of one training step over ``tokens`` tokens of which ``scored`` carry a label."""
    body, head = matrix_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4.0 * body * tokens + 4.0 * head * scored + 2.0 * trainable * tokens


def scoring_flops(model: nn.Module, encoded: Sequence[Sequence[tuple[list[int], list[int]]]]) -> float:
    """Needed FLOPs of scoring examples with a shared context: each context once, each choice's tokens."""
    body, head = matrix_params(model)
    total = 0.0
    for pairs in encoded:
        context = pairs[0][1].count(IGNORE_INDEX)
        choices = [len(ids) - labels.count(IGNORE_INDEX) for ids, labels in pairs]
        total += 2.0 * body * (context + sum(choices)) + 2.0 * head * (1 + sum(c - 1 for c in choices))
    return total


def measure_scoring(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: str, count: int
) -> dict[str, dict[str, Any]]:
    """Zero-shot scoring of the task's first ``count`` test examples, old path then new, on one model.

    ``old``: ``choice_logliks(trim_logits=False, bucketed=False)``, the LM head on every position and the
    former shared-context packing; ``new``: the defaults. Returns examples, seconds and needed FLOPs of each.
    """
    examples = load_task(task).test[:count]
    encoded = [[encode_example(tokenizer, ex.context, c, 512) for c in ex.choices] for ex in examples]
    needed = scoring_flops(model, encoded)
    choice_logliks(model, tokenizer, examples[:4])  # warm-up
    results = {}
    for path, options in (("old", {"trim_logits": False, "bucketed": False}), ("new", {})):
        start = time.perf_counter()
        choice_logliks(model, tokenizer, examples, **options)
        seconds = time.perf_counter() - start
        results[path] = {"examples": len(examples), "seconds": seconds, "needed_flops": needed}
        log.info("scoring, %s path: %d examples in %.1f s", path, len(examples), seconds)
    return results


def scoring_table(scoring: Mapping[str, Mapping[str, float]], gemm: float | None) -> str:
    """Examples per second of zero-shot scoring, new path against old."""
    lines = ["| scoring path | examples | seconds | examples/s | new / old | needed GFLOP/s | × GEMM |"]
    lines.append("|---|---|---|---|---|---|---|")
    for path, r in scoring.items():
        speedup = r["examples"] / r["seconds"] / (scoring["old"]["examples"] / scoring["old"]["seconds"])
        rate = r["needed_flops"] / r["seconds"]
        cells = [path, f"{r['examples']}", f"{r['seconds']:.1f}", f"{r['examples'] / r['seconds']:.2f}"]
        cells += [f"{speedup:.2f}", f"{rate / 1e9:.1f}", f"{rate / gemm:.2f}" if gemm else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
