"""Differential privacy on the adapters: Flower's central-DP wrappers around the base aggregation, with ε.

What is protected: each data owner's whole contribution to the global adapter (client-level DP, McMahan et al.
2018, "Learning differentially private recurrent language models"). Every round the server clips each
client's adapter update (reply minus global adapter) to L2 norm ``C`` and adds Gaussian noise of standard
deviation ``z · C / k`` to the average of the ``k`` updates it aggregates. The clipping and noise are Flower's
own code: ``DifferentialPrivacyServerSideFixedClipping`` or, with ``clipping = "adaptive"``,
``AdaptiveClipping`` (Flower's ``DifferentialPrivacyServerSideAdaptiveClipping`` corrected to Andrew et al.
2021: ``C`` moves towards the ``target_quantile`` of the update norms; its noisy count of unclipped updates is
accounted for inside the same ``z``, Andrew et al.'s split of the noise).

Where the wrapper sits (ours): inside the offsite strategy's reply screening, around the base strategy's
aggregation only. The offsite strategy drops bad and missing replies first (recording why, marking a round
with none left empty), and the wrapper clips, averages and noises the ``k`` replies that remain. Flower's own
arrangement, the wrapper outermost, skipped the whole round before the offsite strategy saw it whenever a
reply was an error, so a run in which every client failed looked trained.

``k`` is the number of updates actually averaged, not the number sampled: when a sampled client fails or is
cut off by the round timeout, noise sized for the ``m`` sampled (``z · C / m``) on an average of ``k < m``
would be a multiplier of ``z · k / m`` and understate ε. ``k`` is public (every round record shows it).

The (ε, δ) spent is composed per released aggregate with Flower's ``RdpAccountant`` (Google's
``dp-accounting``, Rényi DP). Sampling amplification is *not* claimed (``SamplingMethod.NO_AMPLIFICATION``):
clients are sampled without replacement in fixed numbers, which the Poisson analysis does not cover, and
Flower's own accounted mode makes the same choice. ε is therefore an upper bound for any sampling. The
average is unweighted (every client trains ``client.local_steps`` steps and is weighted by them), as the
sensitivity ``C / k`` requires. A round that aggregates nothing releases nothing and spends no privacy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import GaussianPrivacyEvent, Grid, NeighboringRelation, RdpAccountant, SamplingMethod
from flwr.serverapp import PrivacyConfig as AccountingConfig
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from strategies.privacy_config import DPConfig

log = logging.getLogger(__name__)


class AdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower 1.42's server-side adaptive clipping, with ``C`` moved as Andrew et al. (2021, Alg. 1) move it.

    Two corrections, both in the order of the paper's steps; clipping, counting and noise stay Flower's:
    - The paper counts the updates at or below ``C`` (``b_i = 1[||Δ_i|| <= C]``, unclipped) and steps
      ``C <- C · exp(-η (b - γ))``, so ``C`` converges to the γ-quantile of the norms. Flower's wrapper
      (added in flwrlabs/flower#5905) passes the fraction of *clipped* updates to that step, which moves ``C``
      away from the quantile: with every update clipped it shrinks further, with none clipped it grows.
      Here the step takes ``1 - clipped`` (its noise is symmetric, so this is the paper's noisy count).
    - The paper noises this round's aggregate with the ``C`` that clipped it and updates ``C`` after; Flower
      updates first, so a shrinking ``C`` left noise smaller than the updates' sensitivity. Here the new
      ``C`` takes effect once the aggregate is noised.
    """

    _next_clipping_norm: float | None = None

    def _geometric_update(self, clipped_fraction: float) -> None:
        unclipped = 1.0 - clipped_fraction
        step = math.exp(-self.clip_norm_lr * (unclipped - self.target_clipped_quantile))
        self._next_clipping_norm = self.clipping_norm * step

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's aggregation (clip, count, average, noise with this round's ``C``), then the new ``C``."""
        self._next_clipping_norm = None
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self._next_clipping_norm is not None:
            self.clipping_norm = self._next_clipping_norm
        return arrays, metrics


class DifferentialPrivacy:
    """Flower's DP wrapper for one run plus the accountant of what its releases spent.

    Args:
        config: the ``[privacy]`` settings (``clipping`` must not be ``off``).
        num_sampled: clients sampled per round (``m``); sizes adaptive clipping's automatic ``σ_b``.
        population: number of clients (recorded with the accountant; no amplification is claimed).
        weight: the weight every reply must report (``num-examples`` or the key the strategy weighs by) and
            its value, e.g. ``("train_steps", 20)``: the sensitivity ``C / k`` holds for an unweighted
            average only, and a weight is what the client says. None: not checked.

    Raises:
        ValueError: ``clipping`` is ``off`` or ``num_sampled`` is not in [1, population].
    """

    def __init__(
        self, config: DPConfig, num_sampled: int, population: int, weight: tuple[str, float] | None = None
    ) -> None:
        if not config.enabled:
            raise ValueError("privacy.clipping='off': no differential privacy to apply")
        if not 1 <= num_sampled <= population:
            raise ValueError(f"num_sampled={num_sampled} must be in [1, population={population}]")
        self.config = config
        self.num_sampled = num_sampled
        self.population = population
        self.weight = weight
        self.clipping_norm = config.clipping_norm  # adaptive clipping's C carried over a resume
        self.wrapper: DifferentialPrivacyServerSideFixedClipping | AdaptiveClipping | None = None
        self._accountant = _accountant(config.delta, population)

    def wrap(self, aggregation: Strategy) -> Strategy:
        """Flower's server-side clipping wrapper around ``aggregation``, the base strategy's own
        ``configure_train`` and ``aggregate_train`` (see the module docstring for where it sits)."""
        c = self.config
        if c.clipping == "fixed":
            self.wrapper = DifferentialPrivacyServerSideFixedClipping(
                aggregation, c.noise_multiplier, c.clipping_norm, self.num_sampled
            )
        else:
            self.wrapper = AdaptiveClipping(
                aggregation,
                c.noise_multiplier,
                self.num_sampled,
                initial_clipping_norm=self.clipping_norm,
                target_clipped_quantile=c.target_quantile,
                clip_norm_lr=c.clip_norm_lr,
                clipped_count_stddev=c.count_stddev(self.num_sampled),
            )
        return self.wrapper

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapper's ``configure_train``: it keeps ``arrays``, the global adapter updates are measured
        from."""
        return self._wrapper().configure_train(server_round, arrays, config, grid)

    def reply_problem(self, reply: Message, arrayrecord_key: str) -> str | None:
        """Why a reply that passed the strategy's checks cannot be aggregated under DP, or None.

        A reply's weight other than ``weight``'s would make the average weighted (one client's clipped update
        counting more than ``C / k``), and an update of norm 0 (the global adapter sent back) cannot be scaled
        by Flower's clipping, which divides by the norm.
        """
        if self.weight is not None:
            key, expected = self.weight
            reported = next(iter(reply.content.metric_records.values())).get(key)
            if reported != expected:
                return f"reports {key}={reported!r}; under DP every reply must report {expected!r}"
        start = self._wrapper().current_arrays
        arrays = reply.content[arrayrecord_key]
        if all(np.array_equal(arrays[k].numpy(), start[k].numpy()) for k in start.keys()):
            return "adapter unchanged from the global one (an update of norm 0: DP clipping cannot scale it)"
        return None

    def aggregate_train(
        self, server_round: int, replies: Sequence[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None, dict[str, float | None]]:
        """Clip, average and noise ``replies`` (the screened, valid ones: at least one) with the wrapper.

        Returns:
            The noised adapter, the clients' metrics and this release's privacy entry: cumulative
            ``epsilon`` at ``delta`` (None: unbounded, no noise), the accounted ``noise_multiplier``,
            ``clipping_norm`` (the ``C`` that clipped this round), ``next_clipping_norm`` (adaptive: the next
            round's) and ``noise_std`` (per adapter coordinate of the average).
        """
        wrapper, k = self._wrapper(), len(replies)
        # Flower divides the noise by num_sampled_clients; the average is over the k replies aggregated, so
        # sizing it for k keeps the multiplier at z however many sampled clients failed.
        wrapper.num_sampled_clients = k
        clipping_norm = float(wrapper.clipping_norm)
        _in_global_order_(replies, wrapper.current_arrays)
        arrays, metrics = wrapper.aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics, {}
        z = self.config.noise_multiplier
        if z > 0:
            self._accountant.compose(GaussianPrivacyEvent(z, k, self.population))
        self.clipping_norm = float(wrapper.clipping_norm)
        return (
            arrays,
            metrics,
            {
                "epsilon": self._accountant.get_epsilon(self.config.delta) if z > 0 else None,
                "delta": self.config.delta,
                "noise_multiplier": z,
                "clipping_norm": clipping_norm,
                "next_clipping_norm": self.clipping_norm,
                # Flower's update noise: z itself (fixed) or the update's share of it (adaptive).
                "noise_std": float(wrapper.noise_multiplier) * clipping_norm / k,
            },
        )

    def summary(self) -> None:
        """Log the wrapper's DP settings, then the wrapped strategy's."""
        self._wrapper().summary()

    def seed_round_(self, seed: int, server_round: int) -> None:
        """Seed the noise of round ``server_round`` from (``seed``, round).

        Flower's wrappers draw their noise (the adapter's and adaptive clipping's count) from NumPy's global
        generator; seeding it at the start of every round makes a resumed run add the same noise as an
        uninterrupted one, so it ends with the same adapter.
        """
        np.random.seed(np.random.SeedSequence([seed, server_round]).generate_state(1)[0])

    def restore_(self, spent: Sequence[Mapping[str, float | None]]) -> None:
        """Continue after the releases ``spent`` (the privacy entries of a resumed run's records).

        Each release is composed at its own ``noise_multiplier`` (the config's for records written before it
        was recorded); adaptive clipping continues from the last ``next_clipping_norm``.
        """
        self._accountant = _accountant(self.config.delta, self.population)
        for entry in spent:
            z = entry.get("noise_multiplier", self.config.noise_multiplier)
            if z:
                self._accountant.compose(GaussianPrivacyEvent(float(z), self.num_sampled, self.population))
        if spent:
            last = spent[-1]
            carried = last.get("next_clipping_norm") or last["clipping_norm"]
            self.clipping_norm = float(carried or self.clipping_norm)
        if self.wrapper is not None and self.config.clipping == "adaptive":
            self.wrapper.clipping_norm = self.clipping_norm

    def _wrapper(self) -> DifferentialPrivacyServerSideFixedClipping | AdaptiveClipping:
        if self.wrapper is None:
            raise RuntimeError("call wrap() first")
        return self.wrapper


def _in_global_order_(replies: Sequence[Message], start: ArrayRecord) -> None:
    """Put each reply's arrays in the global adapter's key order, in place (same keys: the strategy checked).

    Flower 1.42's DP wrappers clip ``reply - global`` pairing the two lists of arrays by position, not by
    name; a reply in another order (an adapter read back from a sorted safetensors file) would subtract
    unrelated tensors.
    """
    order = list(start.keys())
    for reply in replies:
        for name, record in list(reply.content.array_records.items()):
            if list(record.keys()) != order:
                reply.content[name] = ArrayRecord({k: record[k] for k in order})


def _accountant(delta: float, population: int) -> RdpAccountant:
    config = AccountingConfig(
        target_delta=delta,
        population_size=population,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
    )
    return RdpAccountant(config)
