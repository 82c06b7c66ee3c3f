"""The ``[privacy]`` section of the run config (torch- and flwr-free, like every config dataclass).

``strategies.privacy`` applies it with Flower's central-DP wrappers; see there for what is protected and how ε
is accounted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CLIPPING = ("off", "fixed", "adaptive")


@dataclass(frozen=True)
class DPConfig:
    """``[privacy]`` of the run config: central DP on the aggregated adapter (server-side clipping)."""

    clipping: str = "off"  # off, fixed (Flower's server-side fixed clipping) or adaptive (quantile-tracking)
    noise_multiplier: float = 1.0  # z: noise std = z · C / m on the average of m clipped updates
    clipping_norm: float = 0.1  # C, L2 norm of a client's whole adapter update; adaptive: the initial C
    target_quantile: float = 0.5  # adaptive: fraction of updates left unclipped that C moves towards
    clip_norm_lr: float = 0.2  # adaptive: geometric step of C per round
    delta: float = 1e-5  # δ at which ε is reported; keep it below 1 / number of clients

    def __post_init__(self) -> None:
        _check(self.clipping in CLIPPING, "privacy.clipping", self.clipping, f"one of {', '.join(CLIPPING)}")
        _check(self.noise_multiplier >= 0, "privacy.noise_multiplier", self.noise_multiplier, ">= 0")
        _check(self.clipping_norm > 0, "privacy.clipping_norm", self.clipping_norm, "> 0")
        _check(0 <= self.target_quantile <= 1, "privacy.target_quantile", self.target_quantile, "in [0, 1]")
        _check(self.clip_norm_lr > 0, "privacy.clip_norm_lr", self.clip_norm_lr, "> 0")
        _check(0 < self.delta < 1, "privacy.delta", self.delta, "in (0, 1)")

    @property
    def enabled(self) -> bool:
        return self.clipping != "off"


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config {name}={value!r} is invalid; it must be {allowed}")
