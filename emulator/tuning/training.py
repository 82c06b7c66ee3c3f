"""Local adapter training on a data owner's side: one plain PyTorch loop over the frozen emulator.

Offsite-Tuning (paper): the data owner fine-tunes only the adapter blocks (or LoRA factors on them), running
forward and backward through the frozen emulator. Ours: AdamW, gradient clipping, a FedProx proximal term
when the server asks for one, and a per-round seed derived from (run seed, round, partition), so an
interrupted and resumed federation retrains exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from emulator.data.encoding import IGNORE_INDEX
from emulator.lm.architectures import backbone, get_layers, head_logits
from emulator.tuning.adapters import AdapterState, adapter_state
from emulator.tuning.memory import PeakMemory


class TrainResult(NamedTuple):
    """What one round of local training produced."""

    state: AdapterState  # the trained adapter, fp32 CPU tensors keyed like the global one
    mean_loss: float  # mean task loss over the steps (without the proximal term)
    steps: int
    seconds: float
    peak_memory: int = 0  # bytes: peak memory during training (``emulator.tuning.memory.PeakMemory``)


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The seed of one client's training in one round: a function of (run seed, round, partition) only."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def train_adapter(
    model: nn.Module,
    positions: Mapping[int, int],
    batches: Iterable[Mapping[str, torch.Tensor]],
    lr: float,
    max_grad_norm: float = 1.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    seed: int = 0,
    checkpoint_blocks: bool = False,
    bf16: bool = False,
    trim_logits: bool = True,
) -> TrainResult:
    """Train the adapter of ``model`` in place on ``batches`` and return it.

    Args:
        model: emulator (or full model) whose adapter was prepared with ``prepare_adapter_`` and loaded with
            the global adapter; only parameters with ``requires_grad`` are updated.
        positions: original block index -> position in ``model``'s layer list (keys of the returned state).
        batches: dicts of (B, T) ``input_ids``, ``attention_mask``, ``labels`` (-100 where not scored).
        lr: AdamW learning rate.
        max_grad_norm: clip the adapter's gradient norm to this; 0 disables clipping.
        weight_decay: AdamW weight decay.
        proximal_mu: FedProx: adds (mu/2)·||w - w_start||² to the loss, w_start the weights at entry.
        seed: seeds dropout (LoRA dropout, model dropout) for this call.
        checkpoint_blocks: recompute the activations of every decoder block (the frozen middle and the adapter
            blocks) in the backward pass instead of keeping them (``torch.utils.checkpoint``, one checkpoint
            per block); the same adapter, one more forward pass.
        bf16: bfloat16 autocast on CUDA; no effect on other devices.
        trim_logits: run the LM head only where a label is (``answer_loss``); False runs it on every
            position (the model's own loss: same value, for benchmarks).

    Returns:
        The trained adapter state, the mean task loss, the number of steps, the wall time and the peak memory
        during training (CUDA: tensors; CPU: the process's resident set, see ``emulator.tuning.memory``).

    Raises:
        ValueError: the model has no trainable parameters, ``batches`` is empty, or the loss is not finite.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; call prepare_adapter_ first")
    device = params[0].device
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    torch.manual_seed(seed)
    model.train()
    start, losses = time.perf_counter(), []
    loss_of = answer_loss if trim_logits else lambda m, b: m(**b).loss
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    checkpointed = checkpoint_every_block(model) if checkpoint_blocks else contextlib.nullcontext()
    with PeakMemory(device) as memory, checkpointed:
        try:
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast:
                    loss = loss_of(model, batch)  # mean cross-entropy over the scored (answer) tokens
                if not math.isfinite(loss.item()):
                    raise ValueError(
                        f"training loss became {loss.item()} at step {len(losses) + 1}; lower client.lr"
                    )
                losses.append(loss.item())
                if anchors:
                    loss = loss + proximal_mu / 2 * sum(
                        ((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True)
                    )
                loss.backward()
                if max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        finally:
            model.eval()
    if not losses:
        raise ValueError("batches is empty; nothing to train on")
    seconds = time.perf_counter() - start
    mean_loss = sum(losses) / len(losses)
    return TrainResult(adapter_state(model, positions), mean_loss, len(losses), seconds, memory.peak)


def answer_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens, the LM head run on those positions only.

    The same value as the model's own ``loss`` (transformers' causal-LM loss: labels shifted by one, -100
    ignored, fp32 logits, mean over labelled tokens), without the (B, T, V) logits of the context positions:
    the head is a fifth of SmolLM2's forward FLOPs and its logits the largest activation.

    Args:
        model: a causal LM (or emulator) of a supported family.
        batch: (B, T) ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not scored).

    Returns:
        A scalar tensor (NaN when no token is labelled, as transformers' loss).
    """
    hidden = backbone(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    keep = targets != IGNORE_INDEX
    logits = head_logits(model, hidden.last_hidden_state[:, :-1], keep)  # (N, V)
    return F.cross_entropy(logits.float(), targets[keep])


@contextlib.contextmanager
def checkpoint_every_block(model: nn.Module) -> Iterator[None]:
    """Activation checkpointing of every decoder block, for the duration of the ``with`` block.

    Each block keeps only its input for the backward pass and recomputes the rest there: one more forward
    pass for the activation memory. The frozen middle holds most of it (its activations are kept only for the
    gradient flowing through it to the adapters below); checkpointing the 2 + 2 adapter blocks too took
    SmolLM2's checkpointed client from 0.52 to 0.41 × the full-model client's peak memory at the same step
    cost (1.32 and 1.33 × unchecked; docs/results.md). Dropout is replayed identically (the RNG state is
    restored).
    """
    blocks = list(get_layers(model))
    for block in blocks:
        # An instance attribute shadows the class's forward; non-reentrant checkpointing takes keywords.
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward
