"""Dynamic LayerReplace (ScaleOT stage 1): importance scores and harmonizers, learned jointly on public text.

Paper: every middle block gets an importance score learned by reinforcement learning while harmonizers are
trained to replace blocks; blocks are grouped and about half of each group is replaced per sample.
Reconstruction (ScaleOT published no code; every choice is a field of ``EmulatorConfig``):

- scores ``s_i = 0``; per step ``u_i ~ U(0, σ(s_i))`` and the ``round(α·|G|)`` lowest-``u`` blocks of each
  group ``G`` of ``group_size`` consecutive middle blocks use their harmonizer (``replace_scope='global'``:
  the lowest ``round(α·M)`` over the whole middle);
- harmonizer step on a public batch, loss ``lm`` (cross-entropy of the mixed network, through the model's own
  forward), ``local`` (each harmonizer regresses the output of its block from that block's input, both from
  the full model; all harmonizers are trained every step since the mask plays no part), ``hidden`` (the
  mixed network's hidden state leaving the middle, i.e. entering the top adapter, regressed onto the full
  model's, normalised as ``local``), ``kl`` (KL(full ‖ mixed) of the next-token distributions, logit
  distillation), or a ``+`` mix weighted by ``local_weight`` / ``hidden_weight`` / ``kl_weight``. ``lm``,
  ``hidden`` and ``kl`` train the harmonizers through the sampled mask, where errors of chained harmonizers
  compound, as the adapters will see them (issue 9); they share one teacher and one student pass;
- masks sampled for training (harmonizer and policy steps) replace ``round(ρ·|G|)`` blocks per group,
  ``ρ = train_replace_ratio`` (the paper samples about half; 0 means α); stage 2 replaces ``round(α·|G|)``;
- ``share_replaced`` (ours, after CRaSh's layer sharing): a replaced block's place holds a copy of the nearest
  block the mask keeps, then its harmonizer, in every mixed network (harmonizer and policy steps), so each
  harmonizer learns to correct a shared block rather than to stand in for a whole one; ``local`` regresses
  block i's output from the output, on block i's input, of the nearest block the step's mask keeps other
  than i (one mask per step, every harmonizer trained);
- policy step: ``N_c`` masks scored without gradient on one held-out batch, ``R_j = exp(−ℓ_j)``, advantage
  ``r_j = R_j − mean R`` (``relative``: divided by ``mean R``, which makes η independent of the loss level),
  and ``s_i += η Σ_j r_j m_j[i] σ(s_i)(1−σ(s_i))`` (``paper``) or ``s_i += η Σ_j r_j (m_j[i] − σ(s_i))``
  (``reinforce``), ``m_j[i] = 1`` where block i kept its original. With the mean baseline ``Σ_j r_j = 0``, so
  the two rules differ only by the σ' factor, which slows confident scores down.

The model passed in is not modified: all work happens on a ``frozen_view`` sharing its weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emulator.config import EmulatorConfig, loss_terms
from emulator.data.corpus import public_batches
from emulator.lm.architectures import backbone, get_layers, hidden_size, layer_config, set_layer_config_
from emulator.lm.surgery import BlockRecord, capture_blocks, frozen_view, lm_loss, shared_copy
from emulator.scaleot.activation_cache import (
    cached_local_loss,
    fit_least_squares_,
    middle_states,
    state_batches,
)
from emulator.scaleot.blocks import lowest_per_group, middle_blocks, normalized_mse, replacement_groups
from emulator.scaleot.harmonizer import Harmonizer, make_harmonizers
from emulator.scaleot.layer_sharing import SharedBlockHarmonizer, share_sources

log = logging.getLogger(__name__)


@dataclass
class LayerReplaceResult:
    """Output of stage 1.

    Attributes:
        middle: original indices of the middle blocks, in order.
        scores: importance score per middle block (higher = more important = kept).
        harmonizers: trained harmonizer per middle block.
        loss_curve: harmonizer training loss per step.
        reward_curve: mean reward ``mean_j exp(−ℓ_j)`` per policy step.
        policy_loss_curve: mean LM loss of the sampled masks per policy step.
        seconds: wall time of stage 1.
        cpu_seconds: CPU time of stage 1 (all threads of this process), what ``cached_blocks`` saves.
    """

    middle: list[int]
    scores: dict[int, float]
    harmonizers: dict[int, Harmonizer]
    loss_curve: list[float] = field(default_factory=list)
    reward_curve: list[float] = field(default_factory=list)
    policy_loss_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def sample_mask(
    scores: torch.Tensor, groups: Sequence[Sequence[int]], replace_ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """Sample a keep mask: ``u_i ~ U(0, σ(s_i))``, the lowest ``round(α·|G|)`` of each group replaced.

    Args:
        scores: (M,) importance scores.

    Returns:
        (M,) bool, True where the original block is kept.
    """
    u = torch.rand(scores.shape, generator=generator, dtype=torch.float64) * torch.sigmoid(scores)  # (M,)
    mask = torch.ones(scores.shape, dtype=torch.bool)
    mask[lowest_per_group(u, groups, replace_ratio)] = False
    return mask


def policy_update_(
    scores: torch.Tensor, masks: torch.Tensor, losses: torch.Tensor, lr: float, rule: str, advantage: str
) -> torch.Tensor:
    """One policy-gradient step on the scores, in place.

    Args:
        scores: (M,) float64 scores, updated in place.
        masks: (N_c, M) bool keep masks that were evaluated.
        losses: (N_c,) LM loss of each mask on the same held-out batch.
        lr: η.
        rule: ``paper`` or ``reinforce``.
        advantage: ``relative`` or ``absolute``.

    Returns:
        (N_c,) rewards ``exp(−ℓ_j)``.
    """
    losses = losses.to(torch.float64)
    rewards = torch.exp(-losses)  # (N_c,)
    if advantage == "relative":
        weights = torch.exp(-(losses - losses.min()))  # R_j up to a common factor, without underflow
        adv = weights / weights.mean() - 1.0  # (R_j − mean R) / mean R
    else:
        adv = rewards - rewards.mean()
    keep = masks.to(torch.float64)  # (N_c, M)
    sig = torch.sigmoid(scores)  # (M,)
    if rule == "paper":
        step = (adv @ keep) * sig * (1 - sig)
    else:
        step = adv @ (keep - sig)
    scores.add_(lr * step)
    return rewards


@dataclass
class _MixedNetwork:
    """The frozen view of the model whose middle blocks can each be switched to its harmonizer (with
    ``share``: to a copy of the nearest kept block followed by its harmonizer)."""

    view: nn.Module
    originals: list[nn.Module]
    harmonizers: dict[int, Harmonizer]
    middle: list[int]
    share: bool = False
    layer_config: dict[str, list] = field(default_factory=dict)  # the view's per-layer config as loaded
    _shared: dict[tuple[int, int], SharedBlockHarmonizer] = field(default_factory=dict)  # (slot, source)

    def use_mask_(self, keep: torch.Tensor) -> None:
        """Put the original block where ``keep`` (M,) is True and the harmonizer (or shared block and
        harmonizer) elsewhere, in place."""
        layers = get_layers(self.view)
        removed = [i for k, i in enumerate(self.middle) if not keep[k]]
        kept = [i for k, i in enumerate(self.middle) if keep[k]]
        sources = share_sources(removed, kept) if self.share else {}
        for k, index in enumerate(self.middle):
            if keep[k]:
                layers[index] = self.originals[index]
            elif self.share:
                layers[index] = self._shared_slot(index, sources[index])
            else:
                layers[index] = self.harmonizers[index]
        if self.share:  # a copy runs as its source does (attention type, rope), as in the assembled emulator
            source_index = [sources.get(p, p) for p in range(len(layers))]
            set_layer_config_(self.view, self.layer_config, source_index)

    def _shared_slot(self, index: int, source: int) -> SharedBlockHarmonizer:
        if (index, source) not in self._shared:
            block = shared_copy(self.originals[source], index)
            self._shared[index, source] = SharedBlockHarmonizer(block, self.harmonizers[index])
        return self._shared[index, source]

    def lm_loss(self, batch: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """LM cross-entropy of the network mixed by ``keep``, through the model's own forward."""
        self.use_mask_(keep)
        return lm_loss(self.view, batch)

    def local_loss(self, batch: torch.Tensor, norm: str, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Mean normalised MSE between each harmonizer and its block, on the full model's hidden states.

        With ``share``, harmonizer i takes the output of the nearest block ``keep`` (M,) keeps, i excluded,
        run on block i's input: it learns to correct that block toward block i.
        """
        self.use_mask_(torch.ones(len(self.middle), dtype=torch.bool))
        layers = get_layers(self.view)
        with torch.no_grad(), capture_blocks(layers, self.middle, arguments=self.share) as record:
            backbone(self.view)(input_ids=batch, use_cache=False)
        losses = [
            normalized_mse(self.harmonizers[i](self._local_input(record, i, keep)), record.outputs[i], norm)
            for i in self.middle
        ]
        return torch.stack(losses).mean()

    def _local_input(self, record: BlockRecord, index: int, keep: torch.Tensor | None) -> torch.Tensor:
        if not self.share:
            return record.inputs[index]
        others = [i for i in self.middle if i != index]  # when the mask keeps block i alone
        kept = [i for k, i in enumerate(self.middle) if keep[k] and i != index] or others
        source = share_sources([index], kept)[index]
        with torch.no_grad():  # the shared block is frozen: only the harmonizer after it learns
            return record.call(self.originals[source], source, record.inputs[index])  # (B, T, d)

    def context_losses(
        self, batch: torch.Tensor, keep: torch.Tensor, terms: set[str], norm: str
    ) -> dict[str, torch.Tensor]:
        """``lm``, ``hidden`` and/or ``kl`` of the network mixed by ``keep``, against the full model.

        ``hidden`` compares the output of the last middle block (the top adapter's input); ``kl`` is
        KL(full ‖ mixed) per token, summed over the vocabulary, averaged over tokens.
        """
        layers, last = get_layers(self.view), self.middle[-1]
        run = self.view if terms & {"lm", "kl"} else backbone(self.view)  # the LM head only where needed
        teacher_hidden = teacher_logits = None
        if terms & {"hidden", "kl"}:
            self.use_mask_(torch.ones(len(self.middle), dtype=torch.bool))
            with torch.no_grad(), capture_blocks(layers, [last], inputs=False) as record:
                out = run(input_ids=batch, use_cache=False)
            teacher_hidden = record.outputs[last]
            teacher_logits = out.logits if "kl" in terms else None
        self.use_mask_(keep)
        with capture_blocks(layers, [last], inputs=False) as record:
            out = run(input_ids=batch, use_cache=False)
        losses: dict[str, torch.Tensor] = {}
        if "hidden" in terms:
            losses["hidden"] = normalized_mse(record.outputs[last], teacher_hidden, norm)
        if "lm" in terms:
            logits = out.logits[:, :-1].flatten(0, 1).float()  # (B·(T−1), V)
            losses["lm"] = F.cross_entropy(logits, batch[:, 1:].flatten())
        if "kl" in terms:
            student = F.log_softmax(out.logits.float(), dim=-1).flatten(0, 1)  # (B·T, V)
            teacher = F.log_softmax(teacher_logits.float(), dim=-1).flatten(0, 1)
            losses["kl"] = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return losses


def train_ratio(config: EmulatorConfig) -> float:
    """Fraction of each group the stage-1 masks replace: ``train_replace_ratio``, or α where that is 0."""
    return config.stage1.train_replace_ratio or config.alpha


def dynamic_layer_replace(
    model: nn.Module,
    train_blocks: torch.Tensor,
    heldout_blocks: torch.Tensor,
    config: EmulatorConfig,
    progress: bool = True,
) -> LayerReplaceResult:
    """Run stage 1: train one harmonizer per middle block and learn the blocks' importance scores.

    Args:
        model: the full causal LM; not modified.
        train_blocks: (N, T) public token blocks for the harmonizer steps.
        heldout_blocks: (N', T) public token blocks for the policy steps.
        config: stage-1 settings (``alpha``, ``group_size``, ``harmonizer_*``, ``policy_*``, ``stage1_steps``,
            ...).
        progress: log a progress line every ``config.log_every`` steps at INFO (else DEBUG).

    Returns:
        Scores, trained harmonizers (frozen, on the model's device) and the loss / reward curves.

    Raises:
        ValueError: the adapters leave no middle, or ``alpha`` replaces no block in any group.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    view = frozen_view(model)
    middle = middle_blocks(len(get_layers(view)), config.adapter_bottom, config.adapter_top)
    groups = replacement_groups(len(middle), config.stage1.group_size, config.stage1.replace_scope)
    for name, ratio in (("alpha", config.alpha), ("train_replace_ratio", train_ratio(config))):
        replaced = lowest_per_group(torch.zeros(len(middle)), groups, ratio)
        if not replaced:
            raise ValueError(
                f"emulator.{name}={ratio} replaces no block in groups of {[len(g) for g in groups]}; "
                "raise it or group_size, or use replace_scope='global'"
            )
        if config.share_replaced and len(replaced) == len(middle):
            raise ValueError(
                f"emulator.{name}={ratio} replaces all {len(middle)} middle blocks, so share_replaced=true "
                "has no kept block to share; lower it"
            )
    ref = next(view.parameters())
    harmonizers = make_harmonizers(
        middle,
        hidden_size(view),
        config.stage1.harmonizer_rank,
        config.stage1.harmonizer_activation,
        ref.device,
        ref.dtype,
        config.data.seed,
    )
    net = _MixedNetwork(
        view, list(get_layers(view)), harmonizers, middle, config.share_replaced, layer_config(view)
    )
    params = [p for h in harmonizers.values() for p in h.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.stage1.harmonizer_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.data.seed)
    train = public_batches(train_blocks, config.data.batch_size, generator)
    cached = (
        _cached_batches(view, net, train_blocks, config, generator, progress)
        if config.stage1.cached_blocks
        else None
    )
    heldout = public_batches(heldout_blocks, config.data.batch_size, generator)
    scores = torch.zeros(len(middle), dtype=torch.float64)
    result = LayerReplaceResult(middle=middle, scores={}, harmonizers=harmonizers)
    level = logging.INFO if progress else logging.DEBUG
    for step in range(1, config.stage1.stage1_steps + 1):
        if cached is not None:
            loss = cached_local_loss(harmonizers, middle, next(cached), config.stage1.local_norm)
        else:
            loss = _harmonizer_loss(net, next(train).to(ref.device), scores, groups, generator, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.loss_curve.append(loss.item())
        if step % config.stage1.policy_interval == 0:
            _policy_step_(net, next(heldout).to(ref.device), scores, groups, generator, config, result)
        if step % config.log_every == 0 or step == config.stage1.stage1_steps:
            log.log(
                level,
                "stage 1 step %d/%d: %s",
                step,
                config.stage1.stage1_steps,
                _progress(result, scores, middle),
            )
    for h in harmonizers.values():
        h.requires_grad_(False)
    result.scores = {index: float(scores[k]) for k, index in enumerate(middle)}
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result


def _cached_batches(
    view: nn.Module,
    net: _MixedNetwork,
    train_blocks: torch.Tensor,
    config: EmulatorConfig,
    generator: torch.Generator,
    progress: bool,
) -> Iterator[torch.Tensor]:
    """The cached path of the harmonizer steps: the full model's middle states on ``cached_blocks`` public
    blocks (a seeded sample of ``train_blocks``), each harmonizer started from its least-squares fit where
    ``harmonizer_init`` says, and endless (B, M + 1, T, d) batches of the states."""
    count = min(config.stage1.cached_blocks, len(train_blocks))
    chosen = torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(config.data.seed))
    blocks = train_blocks[chosen[:count].sort().values]
    states = middle_states(view, net.middle, blocks, config.data.batch_size, progress)
    ref = next(iter(net.harmonizers.values())).up.weight
    if config.stage1.harmonizer_init == "least-squares":
        width = states.shape[-1]
        for k, index in enumerate(net.middle):
            inputs = torch.from_numpy(np.ascontiguousarray(states[:, k])).reshape(-1, width)
            outputs = torch.from_numpy(np.ascontiguousarray(states[:, k + 1])).reshape(-1, width)
            fit_least_squares_(
                net.harmonizers[index],
                inputs.to(ref.device),
                outputs.to(ref.device),
                config.stage1.local_norm,
            )
    return state_batches(states, config.data.batch_size, generator, ref.device, ref.dtype)


def _harmonizer_loss(
    net: _MixedNetwork,
    batch: torch.Tensor,
    scores: torch.Tensor,
    groups: list[list[int]],
    generator: torch.Generator,
    config: EmulatorConfig,
) -> torch.Tensor:
    terms = loss_terms(config.stage1.harmonizer_loss)
    weights = {"lm": 1.0, "local": config.stage1.local_weight}
    weights |= {"hidden": config.stage1.hidden_weight, "kl": config.stage1.kl_weight}
    if len(terms) == 1:
        weights = dict.fromkeys(weights, 1.0)  # a single term is the loss itself
    in_context = set(terms) - {"local"}
    # One mask per step; local regression needs one only to choose what each harmonizer corrects (sharing).
    needs_mask = bool(in_context) or (net.share and "local" in terms)
    keep = sample_mask(scores, groups, train_ratio(config), generator) if needs_mask else None
    total = torch.zeros((), device=batch.device)
    if "local" in terms:
        total = total + weights["local"] * net.local_loss(batch, config.stage1.local_norm, keep)
    if in_context:
        losses = net.context_losses(batch, keep, in_context, config.stage1.local_norm)
        total = total + sum(weights[t] * loss for t, loss in losses.items())
    return total


@torch.no_grad()
def _policy_step_(
    net: _MixedNetwork,
    batch: torch.Tensor,
    scores: torch.Tensor,
    groups: list[list[int]],
    generator: torch.Generator,
    config: EmulatorConfig,
    result: LayerReplaceResult,
) -> None:
    masks = torch.stack(
        [
            sample_mask(scores, groups, train_ratio(config), generator)
            for _ in range(config.stage1.policy_candidates)
        ]
    )
    losses = torch.tensor([net.lm_loss(batch, keep).item() for keep in masks], dtype=torch.float64)  # (N_c,)
    rewards = policy_update_(
        scores,
        masks,
        losses,
        config.stage1.policy_lr,
        config.stage1.policy_update,
        config.stage1.policy_advantage,
    )
    result.reward_curve.append(float(rewards.mean()))
    result.policy_loss_curve.append(float(losses.mean()))


def _progress(result: LayerReplaceResult, scores: torch.Tensor, middle: list[int]) -> str:
    order = torch.argsort(scores).tolist()
    lowest = ", ".join(f"{middle[k]}:{scores[k]:+.2f}" for k in order[:3])
    highest = ", ".join(f"{middle[k]}:{scores[k]:+.2f}" for k in order[::-1][:3])
    policy = f", policy loss {result.policy_loss_curve[-1]:.3f}" if result.policy_loss_curve else ""
    return f"harmonizer loss {result.loss_curve[-1]:.4f}{policy}; lowest scores {lowest}; highest {highest}"
