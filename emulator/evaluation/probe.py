"""Model-stealing probe: how much of the full model a data owner can recover from the emulator alone.

Beyond the papers: Offsite-Tuning and ScaleOT measure model privacy by the emulator's fine-tuned accuracy on
the task, i.e. what the data owner gets by doing what they were asked. A data owner who wants the model itself
can do more: fine-tune *everything* the emulator holds (the adapter blocks, the harmonizers or kept middle
blocks, the norms) as a language model on public text, trying to undo the compression, then use it zero-shot.
This module is that attack at a fixed budget (steps × batch × tokens); the study
(``simulations.studies.steal_study``) scores the result zero-shot on the task and compares it with the full
model's zero-shot accuracy. The input embedding (tied to the LM head in SmolLM2 and Llama-style models) stays
frozen: it is the full model's own, uncompressed, so there is nothing to recover there.

The attacker's text is the public corpus the model owner built the emulator from
(``emulator.data.corpus.public_corpus``), so the attacker has exactly the model owner's public data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.data.corpus import corpus_blocks, public_batches, public_corpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """The attacker's budget: ``steps`` AdamW steps of ``batch_size`` blocks of ``seq_len`` public tokens."""

    steps: int = 120  # as many as ScaleOT's stage 1 in compare-smollm2.toml: the model owner's own budget
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 1e-4  # Offsite-Tuning's distillation learning rate
    corpus: str = "pydoc"  # emulator.data.corpus.public_corpus name
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"probe.{name}={getattr(self, name)} is invalid; it must be >= 1")
        if self.seq_len < 2:
            raise ValueError(f"probe.seq_len={self.seq_len} is invalid; it must be >= 2")
        if not self.lr > 0:
            raise ValueError(f"probe.lr={self.lr} is invalid; it must be > 0")


@dataclass(frozen=True)
class ProbeResult:
    """What the attack did: parameters trained, steps, seconds and the LM loss at its start and end.

    ``loss_start`` / ``loss_end``: mean public-text cross-entropy (nats per token) over the first and last
    tenth of the steps (at least one step each).
    """

    trained_parameters: int
    steps: int
    seconds: float
    loss_start: float
    loss_end: float


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` but the input embedding (and an LM head tied to it)."""
    frozen = {id(p) for p in model.get_input_embeddings().parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


def steal_(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: ProbeConfig) -> ProbeResult:
    """Fine-tune ``model`` (an emulator) in place as a causal LM on the public corpus.

    Args:
        model: a causal LM taking ``input_ids`` and ``labels``; trained on its own device, left in eval mode.
        tokenizer: its tokenizer (to cut the corpus into blocks).
        config: the attack's budget and optimiser settings.

    Returns:
        The attack's parameter count, steps, seconds and losses.

    Raises:
        ValueError: an unknown corpus, or a corpus shorter than one block.
    """
    device = next(model.parameters()).device
    blocks = corpus_blocks(tokenizer, public_corpus("train", config.corpus), config.seq_len)
    batches = public_batches(blocks, config.batch_size, torch.Generator().manual_seed(config.seed))
    params = trainable_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    model.train()
    losses, start = [], time.monotonic()
    for step in range(config.steps):
        batch = next(batches).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, config.steps // 10) == 0:
            log.info("probe step %d/%d: public-text loss %.3f", step + 1, config.steps, losses[-1])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tenth = max(1, config.steps // 10)
    return ProbeResult(
        trained_parameters=sum(p.numel() for p in params),
        steps=config.steps,
        seconds=time.monotonic() - start,
        loss_start=sum(losses[:tenth]) / tenth,
        loss_end=sum(losses[-tenth:]) / tenth,
    )
