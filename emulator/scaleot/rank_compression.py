"""Selective Rank Compression (SRC, ScaleOT): low-rank attention projections in the blocks the emulator keeps.

Paper: a rank reduction of the multi-head self-attention weights of the original layers kept in the emulator;
the MLPs are left as they are. Every compressed attention projection W (d_out × d_in) becomes its truncated
SVD of rank r, computed in fp32 and cast back, r chosen by one of two rules (``rank_rule``):

- ``fraction`` (our reading of the paper's β): ``r = ceil(β · min(d_out, d_in))``, β a fraction of the rank;
- ``energy`` (ours; the run config's default, ``emulator.src_rank = "energy"``): the smallest r whose singular
  values hold a fraction β of the squared spectrum (Σ_{i≤r} σ_i² ≥ β Σ σ_i²), so β says how much of the map
  survives whatever its shape.

``compress_attention_`` itself defaults to ``fraction`` on all four projections; the emulator assembly passes
``SrcConfig``'s values, whose defaults are ``energy`` on q and k (and β = 1: SRC off). Where the factors are
smaller than W, ``r · (d_in + d_out) < d_in · d_out``, the projection is stored factorised as a
``LowRankLinear``; otherwise W is overwritten densely by its rank-r approximation (same module, same parameter
names). At ``r = min(d_out, d_in)`` the projection is left untouched (the truncation would be exact).

Knobs (issue 9: on SmolLM2, whose k/v projections are 192 × 576, a plain rank fraction neither saved
parameters nor changed much, hence the energy rule): ``projections`` picks which of q, k, v, o are compressed
(GPT-2's packed ``c_attn`` counts as q, k and v); ``only_smaller`` leaves a projection untouched where the
factorised form would not be smaller, so SRC never changes weights without saving parameters.

GPT-2's projections are transformers ``Conv1D`` modules computing ``y = x @ W + b`` with W stored (d_in,
d_out); they are handled through ``architecture_of(model).transposed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from emulator.lm.architectures import architecture_of, attention_projections, get_layers


class LowRankLinear(nn.Module):
    """``y = up(down(x))``: a rank-r linear map stored as two factors, bias on the output side.

    Args:
        d_in: input width.
        d_out: output width.
        rank: r, the width between the factors.
        bias: whether the map has a bias (that of the projection it replaces).
    """

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)  # weight (r, d_in) = diag(S_r) · V_rᵀ
        self.up = nn.Linear(rank, d_out, bias=bias)  # weight (d_out, r) = U_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the map: ``x`` of shape (..., d_in) gives (..., d_out), through (..., r)."""
        return self.up(self.down(x))  # (..., d_in) -> (..., r) -> (..., d_out)

    @property
    def rank(self) -> int:
        """r, the width between the factors (``down``'s output features)."""
        return self.down.out_features


@dataclass(frozen=True)
class CompressedProjection:
    """What SRC did to one projection: kept rank, full rank, and whether it is stored factorised."""

    rank: int
    full_rank: int
    factorized: bool


def kept_rank(d_out: int, d_in: int, rank_keep: float) -> int:
    """``ceil(β · min(d_out, d_in))``, robust to float noise (0.7 · 100 is 70, not 71), at least 1."""
    return max(1, math.ceil(round(rank_keep * min(d_out, d_in), 6)))


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r with ``Σ_{i≤r} σ_i² ≥ energy · Σ σ_i²`` (``singular_values`` sorted descending)."""
    power = singular_values.double().pow(2)
    share = torch.cumsum(power, 0) / power.sum()
    return min(int((share < energy - 1e-12).sum()) + 1, len(singular_values))


def projection_role(path: str) -> str:
    """Which of q, k, v, o a projection path is (GPT-2's packed ``c_attn``: ``qkv``)."""
    name = path.rsplit(".", 1)[-1]
    return {"q_proj": "q", "k_proj": "k", "v_proj": "v", "c_attn": "qkv"}.get(name, "o")


def projection_weight(module: nn.Module, transposed: bool) -> torch.Tensor:
    """The effective weight of a projection as (d_out, d_in), whatever its storage.

    Args:
        module: an ``nn.Linear``, a GPT-2 ``Conv1D`` (``transposed=True``) or a ``LowRankLinear``.
        transposed: whether a non-factorised ``module`` stores its weight as (d_in, d_out).
    """
    if isinstance(module, LowRankLinear):
        return module.up.weight @ module.down.weight  # (d_out, r) @ (r, d_in)
    return module.weight.t() if transposed else module.weight


def compress_attention_(
    model: nn.Module,
    block_positions: Iterable[int],
    rank_keep: float,
    rank_rule: str = "fraction",
    projections: str = "qkvo",
    only_smaller: bool = False,
) -> dict[int, dict[str, CompressedProjection]]:
    """Replace the attention projections of the given blocks by rank-r SVD approximations, in place.

    Args:
        model: a causal LM of a supported family (typically the emulator).
        block_positions: positions in the model's layer list whose attention is compressed.
        rank_keep: β in (0, 1], the fraction of each projection's rank (``fraction``) or of its squared
            singular values (``energy``) kept.
        rank_rule: ``fraction`` or ``energy``.
        projections: the roles compressed, a subset of ``qkvo``; other projections are left untouched.
        only_smaller: leave a projection untouched where its factors would not be smaller than its weight.

    Returns:
        ``{position: {projection path: CompressedProjection}}``.

    Raises:
        ValueError: ``rank_keep`` is outside (0, 1], or a position is out of range.
    """
    if not 0.0 < rank_keep <= 1.0:
        raise ValueError(f"rank_keep={rank_keep} is out of range; allowed: (0, 1]")
    layers = get_layers(model)
    transposed = architecture_of(model).transposed
    report: dict[int, dict[str, CompressedProjection]] = {}
    for position in block_positions:
        if not 0 <= position < len(layers):
            raise ValueError(
                f"block position {position} is out of range for a model with {len(layers)} blocks"
            )
        block = layers[position]
        report[position] = {}
        for path, module in attention_projections(model, block).items():
            if not set(projection_role(path)) & set(projections):
                continue
            replacement, info = _compress(module, transposed, rank_keep, rank_rule, only_smaller)
            if replacement is not module:
                parent_path, _, name = path.rpartition(".")
                setattr(block.get_submodule(parent_path), name, replacement)
            report[position][path] = info
    return report


def _compress(
    module: nn.Module, transposed: bool, rank_keep: float, rank_rule: str, only_smaller: bool
) -> tuple[nn.Module, CompressedProjection]:
    weight = projection_weight(module, transposed)  # (d_out, d_in)
    d_out, d_in = weight.shape
    full = min(d_out, d_in)
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)  # fp32 for accuracy
    rank = energy_rank(s, rank_keep) if rank_rule == "energy" else kept_rank(d_out, d_in, rank_keep)
    factorized = rank * (d_in + d_out) < d_in * d_out
    if rank >= full or (only_smaller and not factorized):
        return module, CompressedProjection(full, full, factorized=False)
    left = u[:, :rank]  # (d_out, r)
    right = s[:rank, None] * vh[:rank]  # (r, d_in)
    if factorized:
        bias = module.bias
        low = LowRankLinear(d_in, d_out, rank, bias=bias is not None).to(weight.device, weight.dtype)
        with torch.no_grad():
            low.up.weight.copy_(left)
            low.down.weight.copy_(right)
            if bias is not None:
                low.up.bias.copy_(bias)
        low.requires_grad_(module.weight.requires_grad)
        return low, CompressedProjection(rank, full, factorized=True)
    approx = left @ right  # (d_out, d_in)
    with torch.no_grad():
        module.weight.copy_(approx.t() if transposed else approx)
    return module, CompressedProjection(rank, full, factorized=False)
