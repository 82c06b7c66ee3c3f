"""Middle blocks and how stage-1 and stage-2 methods train against them (shared by Dynamic LayerReplace,
emulator assembly and distillation).

Which blocks are the adapters (Offsite-Tuning's sandwich, kept by ScaleOT: the bottom and top blocks a data
owner trains) and which lie between them, how those are grouped, which are chosen per group, and the loss
every on-public-text training loop uses: a normalised MSE to the full model's hidden states (Offsite-Tuning's
distillation loss and our per-token / per-dimension variants); its batches are ``emulator.data.corpus``'s.
And the layer map every method ends with: what became of each original block (``LayerEntry``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

LayerKind = Literal[
    "adapter", "original", "compressed", "harmonizer", "shared", "shared+harmonizer", "dropped"
]


@dataclass(frozen=True)
class LayerEntry:
    """One original block and what became of it in the emulator.

    Attributes:
        original: index of the block in the full model.
        kind: ``adapter``, ``original`` (kept as is), ``compressed`` (SRC), ``harmonizer`` (replaced),
            ``shared`` (a copy of block ``source``), ``shared+harmonizer`` (that copy, then the harmonizer) or
            ``dropped``.
        position: index in the emulator's layer list; None for a dropped block.
        ranks: kept rank per attention projection path (``compressed`` only).
        factorized: projections stored as ``LowRankLinear`` factors (``compressed`` only).
        source: original index of the kept block whose copy stands here (``shared*`` only).
    """

    original: int
    kind: LayerKind
    position: int | None
    ranks: dict[str, int] = field(default_factory=dict)
    factorized: tuple[str, ...] = ()
    source: int | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {
            "original": self.original,
            "kind": self.kind,
            "position": self.position,
            "ranks": dict(self.ranks),
            "factorized": list(self.factorized),
        }
        # Written only where set: the manifests of methods without sharing stay as they were.
        return values | ({"source": self.source} if self.source is not None else {})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LayerEntry:
        return cls(
            original=int(values["original"]),
            kind=values["kind"],
            position=values["position"],
            ranks={k: int(v) for k, v in values.get("ranks", {}).items()},
            factorized=tuple(values.get("factorized", ())),
            source=None if values.get("source") is None else int(values["source"]),
        )


def round_half_up(x: float) -> int:
    """``round`` as people expect it (Python's rounds halves to even: round(0.5) == 0)."""
    return math.floor(x + 0.5 + 1e-9)


def adapter_layers(num_layers: int, bottom: int, top: int) -> list[int]:
    """Original indices of the adapter blocks: the first ``bottom`` and the last ``top``.

    Raises:
        ValueError: the adapters would leave no middle block to compress.
    """
    if bottom < 0 or top < 0 or bottom + top >= num_layers:
        raise ValueError(
            f"adapter layers bottom={bottom}, top={top} must be >= 0 and leave at least one of the "
            f"model's {num_layers} blocks in the middle"
        )
    return list(range(bottom)) + list(range(num_layers - top, num_layers))


def middle_blocks(num_layers: int, bottom: int, top: int) -> list[int]:
    """Original indices of the blocks between the adapters."""
    adapters = set(adapter_layers(num_layers, bottom, top))
    return [i for i in range(num_layers) if i not in adapters]


def replacement_groups(num_middle: int, group_size: int, scope: str) -> list[list[int]]:
    """Middle-relative indices split into consecutive groups (``global``: one group of all)."""
    if scope == "global":
        return [list(range(num_middle))]
    return [
        list(range(start, min(start + group_size, num_middle))) for start in range(0, num_middle, group_size)
    ]


def lowest_per_group(
    values: torch.Tensor, groups: Sequence[Sequence[int]], replace_ratio: float
) -> list[int]:
    """The ``round(α·|G|)`` lowest entries of ``values`` in each group (ties: lower index first), sorted;
    ``replace_ratio`` is α, ``EmulatorConfig.alpha`` (not LoRA's or Dirichlet's alpha)."""
    chosen: list[int] = []
    for group in groups:
        count = round_half_up(replace_ratio * len(group))
        order = sorted(group, key=lambda i: (float(values[i]), i))
        chosen.extend(order[:count])
    return sorted(chosen)


def normalized_mse(pred: torch.Tensor, target: torch.Tensor, norm: str) -> torch.Tensor:
    """Squared error divided by the target's mean square, taken globally, per token or per hidden dimension.

    ``global`` is Offsite-Tuning's distillation loss ``mean(((h_T − h_S) / sqrt(mean(h_T²)))²)``; ``token``
    divides each token by its own mean square; ``dimension`` divides each hidden dimension by its mean square
    over the batch, weighting every dimension alike. On SmolLM2, whose residual stream has a few huge
    dimensions, ``token`` gave far better emulators than ``dimension``: the huge dimensions set the scale of
    the next block's RMSNorm for the whole token, so their absolute error matters; ``dimension`` discounts it.

    Args:
        pred, target: (B, T, d).
    """
    target = target.detach()
    return ((pred - target).pow(2) / (mean_square(target, norm) + 1e-6)).mean()


def mean_square(target: torch.Tensor, norm: str) -> torch.Tensor:
    """``normalized_mse``'s denominator: the mean of ``target²`` over everything (``global``, shape ()), over
    the hidden dimension (``token``, (..., 1)) or over every axis but it (``dimension``, (1, ..., d)).

    Raises:
        ValueError: another ``norm``.
    """
    square = target.pow(2)
    if norm == "global":
        return square.mean()
    if norm == "token":
        return square.mean(dim=-1, keepdim=True)
    if norm == "dimension":
        return square.mean(dim=tuple(range(square.dim() - 1)), keepdim=True)
    raise ValueError(f"norm={norm!r} is not allowed; use 'global', 'token' or 'dimension'")
