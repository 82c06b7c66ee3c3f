"""The ``[privacy]`` section of the run config (torch- and flwr-free, like every config dataclass).

``strategies.privacy`` applies it with Flower's central-DP wrappers; see there for what is protected and how ε
is accounted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

CLIPPING = ("off", "fixed", "adaptive")
_ADAPTIVE_ONLY = ("target_quantile", "clip_norm_lr", "clipped_count_stddev")


@dataclass(frozen=True)
class DPConfig:
    """``[privacy]`` of the run config: central DP on the aggregated adapter (server-side clipping)."""

    clipping: str = "off"  # off, fixed (Flower's server-side fixed clipping) or adaptive (quantile-tracking)
    noise_multiplier: float = (
        1.0  # z: noise std = z · C / k on the average of the k clipped updates aggregated
    )
    clipping_norm: float = 0.1  # C, L2 norm of a client's whole adapter update; adaptive: the initial C
    target_quantile: float = 0.5  # adaptive: fraction of updates left unclipped that C moves towards
    clip_norm_lr: float = 0.2  # adaptive: geometric step of C per round
    # adaptive: σ_b, std of the noise on the count of unclipped updates; 0: automatic (count_stddev)
    clipped_count_stddev: float = 0.0
    delta: float = 1e-5  # δ at which ε is reported; keep it below 1 / number of clients

    def __post_init__(self) -> None:
        _check(self.clipping in CLIPPING, "privacy.clipping", self.clipping, f"one of {', '.join(CLIPPING)}")
        _check(self.noise_multiplier >= 0, "privacy.noise_multiplier", self.noise_multiplier, ">= 0")
        _check(self.clipping_norm > 0, "privacy.clipping_norm", self.clipping_norm, "> 0")
        _check(0 <= self.target_quantile <= 1, "privacy.target_quantile", self.target_quantile, "in [0, 1]")
        _check(self.clip_norm_lr > 0, "privacy.clip_norm_lr", self.clip_norm_lr, "> 0")
        _check(0 < self.delta < 1, "privacy.delta", self.delta, "in (0, 1)")
        # Only values are seen here, so a changed one is caught; one given at its default is left to
        # check_given, which the config parser calls with the keys that were written.
        self.check_given(f.name for f in fields(self) if getattr(self, f.name) != f.default)
        sigma, z = self.clipped_count_stddev, self.noise_multiplier
        _check(sigma >= 0, "privacy.clipped_count_stddev", sigma, ">= 0 (0: automatic)")
        # Andrew et al. split z between the update and the count: z_update = (z^-2 - (2 σ_b)^-2)^-1/2 needs
        # 2 σ_b > z. Flower raises on this inside its wrapper, after the model has loaded; check it here.
        if self.clipping == "adaptive" and sigma > 0 and z > 0:
            _check(
                2 * sigma > z,
                "privacy.clipped_count_stddev",
                sigma,
                f"> noise_multiplier / 2 = {z / 2:g}, or 0 (automatic)",
            )

    def check_given(self, names: Iterable[str]) -> None:
        """Refuse any of ``names``, the settings given (in a config file, by ``--set``), that this clipping
        ignores, even at its default value: whoever set noise believes DP ran.

        Raises:
            ValueError: one line naming the setting, its value and the clipping it needs.
        """
        for name in names:
            if not _reads(self.clipping, name):
                needs = "'adaptive'" if name in _ADAPTIVE_ONLY else "'fixed' or 'adaptive'"
                raise ValueError(
                    f"config privacy.{name}={getattr(self, name)!r} has no effect with privacy.clipping="
                    f"{self.clipping!r}; set privacy.clipping to {needs} or leave it out"
                )

    def to_dict(self) -> dict[str, Any]:
        """The settings this clipping reads: a written config gives none that ``check_given`` refuses."""
        return {f.name: getattr(self, f.name) for f in fields(self) if _reads(self.clipping, f.name)}

    def count_stddev(self, num_sampled: int) -> float:
        """Adaptive clipping's σ_b for ``num_sampled`` clients a round: the one set, or automatically Andrew
        et al.'s ``num_sampled / 20`` raised to ``noise_multiplier`` where that is smaller (small cohorts: the
        paper's value leaves no noise budget for the update), which costs the update at most 15 % more noise
        (z_update <= z / sqrt(3/4)). 0 without noise."""
        if self.clipped_count_stddev > 0:
            return self.clipped_count_stddev
        return max(num_sampled / 20, self.noise_multiplier) if self.noise_multiplier > 0 else 0.0

    @property
    def enabled(self) -> bool:
        return self.clipping != "off"


def _reads(clipping: str, name: str) -> bool:
    """Whether a DPConfig with ``clipping`` uses its setting ``name``."""
    if name == "clipping":
        return True
    return clipping == "adaptive" or (clipping == "fixed" and name not in _ADAPTIVE_ONLY)


def drop_written_defaults(table: Any) -> Any:
    """A ``[privacy]`` table as ``RunConfig.to_dict`` wrote it into run directories before it left out what
    the clipping ignores (every setting, each at its default where ignored) without those settings, so that
    such a run can still be resumed, exported and compared; any other table as it is (a user's file gives a
    few keys, and each is checked)."""
    if not isinstance(table, Mapping):
        return table
    given = {key.replace("-", "_"): value for key, value in table.items()}
    defaults = {f.name: f.default for f in fields(DPConfig)}
    if given.keys() != defaults.keys():
        return table
    return {k: v for k, v in given.items() if _reads(given["clipping"], k) or v != defaults[k]}


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config {name}={value!r} is invalid; it must be {allowed}")
