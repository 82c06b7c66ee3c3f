"""Differential privacy on the adapters: Flower's central-DP wrappers around the offsite strategy, with ε.

What is protected: each data owner's whole contribution to the global adapter (client-level DP, McMahan et al.
2018, "Learning differentially private recurrent language models"). Every round the server clips each
client's adapter update (reply minus global adapter) to L2 norm ``C`` and adds Gaussian noise of standard
deviation ``noise_multiplier · C / m`` to the average of the ``m`` sampled updates. The clipping and noise are
Flower's own code: ``DifferentialPrivacyServerSideFixedClipping`` or, with ``clipping = "adaptive"``,
``DifferentialPrivacyServerSideAdaptiveClipping`` (Andrew et al. 2021, which adapts ``C`` towards a quantile
of the update norms; its noisy clip count is accounted for inside the same noise multiplier).

The (ε, δ) spent is composed per released aggregate with Flower's ``RdpAccountant`` (Google's
``dp-accounting``, Rényi DP). Sampling amplification is *not* claimed (``SamplingMethod.NO_AMPLIFICATION``):
clients are sampled without replacement in fixed numbers, which the Poisson analysis does not cover, and
Flower's own accounted mode makes the same choice. ε is therefore an upper bound for any sampling.

Two consequences of the sensitivity ``C / m`` (uniform averaging of exactly ``m`` updates):
- the average is unweighted (every client trains ``client.local_steps`` steps and is weighted by them);
- a round in which a sampled client fails is not aggregated (Flower's wrappers refuse it): the adapter stays
  as it was and no privacy is spent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, RdpAccountant, SamplingMethod
from flwr.serverapp import PrivacyConfig as AccountingConfig
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.serverapp.strategy.strategy import Strategy

from strategies.privacy_config import DPConfig

log = logging.getLogger(__name__)


class DifferentialPrivacy:
    """Flower's DP wrapper for one run plus the accountant of what its releases spent.

    Args:
        config: the ``[privacy]`` settings (``clipping`` must not be ``off``).
        num_sampled: clients aggregated per round (``m``); Flower's noise std is ``z · C / m``.
        population: number of clients (recorded with the accountant; no amplification is claimed).

    Raises:
        ValueError: ``clipping`` is ``off`` or ``num_sampled`` is not in [1, population].
    """

    def __init__(self, config: DPConfig, num_sampled: int, population: int) -> None:
        if not config.enabled:
            raise ValueError("privacy.clipping='off': no differential privacy to apply")
        if not 1 <= num_sampled <= population:
            raise ValueError(f"num_sampled={num_sampled} must be in [1, population={population}]")
        self.config = config
        self.num_sampled = num_sampled
        self.population = population
        self.clipping_norm = config.clipping_norm  # adaptive clipping's C carried over a resume
        self.wrapper: Strategy | None = None
        self._accountant = _accountant(config.delta, population)

    def wrap(self, strategy: Strategy) -> Strategy:
        """``strategy`` inside Flower's server-side clipping wrapper; run the rounds through the result."""
        c = self.config
        if c.clipping == "fixed":
            self.wrapper = DifferentialPrivacyServerSideFixedClipping(
                strategy, c.noise_multiplier, c.clipping_norm, self.num_sampled
            )
        else:
            self.wrapper = DifferentialPrivacyServerSideAdaptiveClipping(
                strategy,
                c.noise_multiplier,
                self.num_sampled,
                initial_clipping_norm=self.clipping_norm,
                target_clipped_quantile=c.target_quantile,
                clip_norm_lr=c.clip_norm_lr,
            )
        return self.wrapper

    def release(self) -> dict[str, float | None]:
        """Account one aggregate about to be noised; returns its ``epsilon`` (cumulative), ``delta``,
        ``clipping_norm`` and ``noise_std`` (per adapter coordinate). ε is None (unbounded) without noise.

        Call it from inside the wrapped strategy's aggregation: both wrappers have then fixed the ``C`` that
        scales this round's noise (adaptive clipping updates it before aggregating).
        """
        z = self.config.noise_multiplier
        if z > 0:
            self._accountant.compose(GaussianPrivacyEvent(z, self.num_sampled, self.population))
        if self.wrapper is not None:
            self.clipping_norm = float(self.wrapper.clipping_norm)
        return {
            "epsilon": self._accountant.get_epsilon(self.config.delta) if z > 0 else None,
            "delta": self.config.delta,
            "clipping_norm": self.clipping_norm,
            "noise_std": z * self.clipping_norm / self.num_sampled,
        }

    def seed_round_(self, seed: int, server_round: int) -> None:
        """Seed the noise of round ``server_round`` from (``seed``, round).

        Flower's wrappers draw their noise (the adapter's and adaptive clipping's clipped count) from NumPy's
        global generator; seeding it at the start of every round makes a resumed run add the same noise as
        an uninterrupted one, so it ends with the same adapter.
        """
        np.random.seed(np.random.SeedSequence([seed, server_round]).generate_state(1)[0])

    def restore_(self, spent: Sequence[Mapping[str, float | None]]) -> None:
        """Continue after the releases ``spent`` (the privacy entries of a resumed run's records)."""
        self._accountant = _accountant(self.config.delta, self.population)
        if self.config.noise_multiplier > 0 and spent:
            event = GaussianPrivacyEvent(self.config.noise_multiplier, self.num_sampled, self.population)
            self._accountant.compose(event, count=len(spent))
        if spent:
            self.clipping_norm = float(spent[-1]["clipping_norm"] or self.clipping_norm)


def _accountant(delta: float, population: int) -> RdpAccountant:
    config = AccountingConfig(
        target_delta=delta,
        population_size=population,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
    )
    return RdpAccountant(config)
