"""Offsite-tuning on top of any of Flower's message strategies (FedAvg, FedProx, FedAdam, ...).

Offsite-Tuning (Xiao et al. 2023) and ScaleOT (Yao et al. 2025) describe one data owner; the federation is
ours: each round the server samples clients, sends the global adapter, and aggregates
the adapters they send back with the chosen Flower aggregation, then evaluates them plugged into the full
model.

``OffsiteTuning`` is a mixin: ``offsite_strategy("fedadam", ...)`` builds a subclass of Flower's ``FedAdam``
with it in front, so aggregation stays Flower's own code. The mixin adds, by small overrides:
- a one-time emulator handshake per node, and client sampling by partition id seeded with (seed, round), so a
  resumed run samples what an uninterrupted one would;
- reply checks (``strategies.replies``): a bad reply is dropped with a warning, the round goes on;
- server-side evaluation through a callable, on a schedule, and one ``RoundRecord`` per round;
- optionally FedBiOT's re-alignment (Wu et al. 2024) through a callable after each aggregation: the
  emulator's harmonizers it returns travel with the next round's train messages and are checkpointed.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Result,
    Strategy,
)
from flwr.supercore import log as flwr_log
from flwr.supercore.logger import LOGGER_NAME

from emulator.config_parse import Spelled, parse_typed
from strategies import wire
from strategies.nodes import CheckedGrid, SampledGrid, await_nodes, choose_nodes, handshake
from strategies.privacy import DifferentialPrivacy
from strategies.records import RoundRecord, fill_accuracies, progress_line
from strategies.replies import AdapterSpec, majority_metric_keys, reply_problem
from strategies.settings import EmulatorOffer, RealignFn, Sampling, ServerEvaluation

log = logging.getLogger(__name__)

STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedadagrad": FedAdagrad,
    "fedyogi": FedYogi,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}
# Set by the mixin or by the server app; not a strategy kwarg a config may pass.
_OWNED_KWARGS = frozenset(
    {
        "fraction_train",
        "fraction_evaluate",
        "min_train_nodes",
        "min_evaluate_nodes",
        "min_available_nodes",
        "weighted_by_key",
        "arrayrecord_key",
        "configrecord_key",
        "train_metrics_aggr_fn",
        "evaluate_metrics_aggr_fn",
    }
)
# Server-optimiser state of Flower's strategies that must survive a checkpoint (FedOpt family, FedAvgM).
_STATE_ATTRS = ("m_t", "v_t", "momentum_vector")
_HARMONIZERS = "harmonizers"  # checkpoint-state prefix of the re-aligned harmonizers


def strategy_parameters(name: str) -> list[str]:
    """The keyword arguments a config may pass to strategy ``name`` (its own, not the sampling ones).

    Raises:
        ValueError: ``name`` is not in ``STRATEGIES``.
    """
    return sorted(_config_parameters(name))


def _config_parameters(name: str) -> dict[str, type]:
    if name not in STRATEGIES:
        raise ValueError(f"federation.strategy={name!r} is unknown; use one of {', '.join(STRATEGIES)}")
    params = inspect.signature(STRATEGIES[name].__init__).parameters
    # A config holds TOML scalars: an argument of another type (Bulyan's selection_rule, a callable) cannot
    # be given in one.
    return {
        p.name: p.annotation
        for p in params.values()
        if p.name != "self" and p.name not in _OWNED_KWARGS and p.annotation in (bool, int, float, str)
    }


# What Flower's constructors accept but their aggregation cannot use (a negative learning rate or momentum
# of 1 diverges, a negative proximal term rewards drifting away); Flower checks only FedTrimmedAvg's beta.
_KWARG_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "proximal_mu": (lambda v: v >= 0, ">= 0 (0: FedAvg)"),
    "server_learning_rate": (lambda v: v > 0, "> 0"),
    "server_momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eta": (lambda v: v > 0, "> 0"),
    "eta_l": (lambda v: v > 0, "> 0"),
    "tau": (lambda v: v > 0, "> 0"),
    "beta_1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta_2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "num_malicious_nodes": (lambda v: v >= 0, ">= 0"),
    "num_nodes_to_select": (lambda v: v >= 1, ">= 1"),
}


def check_strategy_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` (``federation.strategy_kwargs``) checked for strategy ``name`` and typed as its
    constructor declares them (an integer where a float is meant becomes a float), before any model loads.

    Raises:
        ValueError: ``name`` is unknown; a key is not an argument of the strategy (the valid ones are
            listed); or a value has the wrong type, is out of range, or Flower's constructor refuses it (one
            line naming ``federation.strategy_kwargs.<key>``, the value and what is allowed).
    """
    valid = _config_parameters(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"config federation.strategy_kwargs={unknown!r} is invalid; it must be arguments of {name}: "
            f"{', '.join(sorted(valid)) or '(it takes none)'}"
        )
    typed = {}
    for key, value in kwargs.items():
        field = f"federation.strategy_kwargs.{key}"
        typed[key] = parse_typed(value, valid[key], f"config {field}", spelled=isinstance(value, Spelled))
        ok, allowed = _KWARG_RANGES.get(key, (lambda _: True, ""))
        if not ok(typed[key]):
            raise ValueError(f"config {field}={typed[key]!r} is invalid; it must be {allowed}")
    refusal = _refusal(name, typed)
    if refusal:
        # Flower's message names its argument but not the config key: find the one it refuses.
        field, value = "federation.strategy_kwargs", typed
        for key in typed:
            if _refusal(name, {key: typed[key]}):
                field, value = f"{field}.{key}", typed[key]
                break
        raise ValueError(
            f"config {field}={value!r} is invalid; Flower's {STRATEGIES[name].__name__} refuses it: {refusal}"
        )
    return typed


def _refusal(name: str, kwargs: Mapping[str, Any]) -> str:
    """Why Flower's constructor of strategy ``name`` refuses ``kwargs``; "" if it takes them.

    A trial construction, so Flower's own checks run when the config is read; its warnings (FedProx with
    proximal_mu=0) belong to the run's real construction, not to each parse of the config.
    """
    flwr_logger = logging.getLogger(LOGGER_NAME)
    disabled, flwr_logger.disabled = flwr_logger.disabled, True
    try:
        STRATEGIES[name](**kwargs)
    except (ValueError, TypeError) as error:
        return str(error)
    finally:
        flwr_logger.disabled = disabled
    return ""


def averaging_strategies() -> list[str]:
    """The strategies whose aggregation is FedAvg's average itself, the only ones central DP may wrap.

    Flower's DP wrapper noises what the strategy's ``aggregate_train`` returns, with the sensitivity ``C / k``
    of an average of ``k`` clipped updates. A median or Krum's pick moves by up to ``C`` for one client, and
    the FedOpt family (and FedAvgM) step from un-noised averages kept in their state, so ε would be
    understated. Flower's own accounted DP mode makes the same requirement.
    """
    return [n for n, cls in STRATEGIES.items() if cls.aggregate_train is FedAvg.aggregate_train]


def offsite_strategy(name: str, **kwargs: Any) -> OffsiteTuning:
    """Flower's strategy ``name`` with offsite-tuning in front (see ``OffsiteTuning`` for the arguments)."""
    strategy_parameters(name)
    return _offsite_class(STRATEGIES[name])(**kwargs)


@cache
def _offsite_class(base: type[FedAvg]) -> type:
    return type(f"OffsiteTuning{base.__name__}", (OffsiteTuning, base), {"__doc__": OffsiteTuning.__doc__})


class OffsiteTuning:
    """Offsite-tuning in front of a Flower ``FedAvg``-family strategy; aggregation is the base class's.

    Contract with the client:
    - ``query.emulator`` (once per node): config ``emulator-path`` (the bundle the server wrote; a node's own
      ``emulator-path`` node config takes precedence) and ``emulator-sha256``. The client loads the emulator
      bundle (never the full model) and replies with a ConfigRecord ``info`` holding ``partition-id``,
      ``num-partitions`` and the ``emulator-sha256`` of what it loaded. Nodes that fail, load another
      emulator, report a partition outside the run's or one another connected node holds are never sampled
      (the reason is in the round's rejections).
    - ``train`` (each round, sampled nodes only): ArrayRecord ``arrays`` = the global adapter (fp32, keys
      ``"{original block index}.{name in block}"``; nothing else crosses the wire), ConfigRecord ``config`` =
      the training settings (``strategies.wire.ClientSettings``) plus ``server-round`` (and ``proximal-mu``).
      The client resets its adapter to ``arrays``, trains it on its partition with a seed derived from
      (``seed``, ``server-round``, partition id), adds ``(mu/2)·||w - w_global||²`` when ``proximal-mu`` > 0,
      and replies ArrayRecord ``arrays`` with the same keys, shapes and dtypes and MetricRecord ``metrics``
      with ``num-examples`` (> 0) and ``train_loss``. Any other reply is dropped with a logged reason.
      With re-alignment on, every train message after the first re-alignment also holds ArrayRecord
      ``harmonizers`` (``wire.HARMONIZERS``): the client puts them into its emulator's harmonizers before
      training (a key or shape mismatch is an error reply); a train message without it means the bundle's
      own harmonizers.

    Args:
        offer: the emulator bundle the handshake offers, and what it checks (``strategies.settings``).
        sampling: which nodes train each round and how long the server waits for them; sampling is done
            here, the base strategy's own ``fraction_train`` etc. are not used (default: ``Sampling()``).
        evaluation: the server-side evaluation and its schedule (default: none).
        on_round_end: called with the finished ``RoundRecord`` and the global adapter (checkpointing).
        check: called before each round and while waiting for nodes; raises to end the run (the
            simulation backend died).
        realign: FedBiOT's re-alignment, called with the round and the new global adapter after every
            aggregation (before the evaluation, which then sees the re-aligned emulator); the harmonizers it
            returns go with the next round's train messages (their bytes counted in that round's record).
            None: off.
        privacy: central DP (``strategies.privacy``): its Flower wrapper goes around the base strategy's
            aggregation, inside this strategy's reply checks, so failed and missing replies are recorded
            and an empty round is marked whatever the wrapper; it clips the valid replies, and noises their
            average for the number aggregated. Each release's (ε, δ) goes into the round record. None: no DP.
        **base_kwargs: the base strategy's own arguments (``proximal_mu``, ``eta``, ...).
    """

    def __init__(
        self,
        *,
        offer: EmulatorOffer,
        sampling: Sampling | None = None,
        evaluation: ServerEvaluation | None = None,
        on_round_end: Callable[[RoundRecord, ArrayRecord], None] | None = None,
        check: Callable[[], None] | None = None,
        realign: RealignFn | None = None,
        privacy: DifferentialPrivacy | None = None,
        **base_kwargs: Any,
    ) -> None:
        # The base strategy sends to every node it is shown; the mixin shows it only the sampled ones.
        super().__init__(fraction_train=1.0, min_train_nodes=0, min_available_nodes=0, **base_kwargs)
        self.offer = offer
        self.sampling = sampling or Sampling()
        self.evaluation = evaluation or ServerEvaluation()
        self.on_round_end = on_round_end
        self.check = check
        self.realign = realign
        self.harmonizers: ArrayRecord | None = None  # the latest re-alignment's, sent with each train message
        self.privacy = privacy
        if privacy is not None:
            privacy.wrap(_BaseAggregation(self))
        self.history: list[RoundRecord] = []
        self.partitions: dict[int, int] = {}  # node id -> partition id, from the handshake
        self.refused: dict[int, str] = {}  # node id -> why it is never sampled
        self._spec: AdapterSpec | None = None
        self._offset = 0  # rounds done before this start() (resume)
        self._last_round = 0
        self._record: RoundRecord | None = None
        self._round_start = 0.0
        self._sampled: list[int] = []  # node ids sent a train message this round

    def summary(self) -> None:
        """Log the sampling settings (the base strategy's own show the placeholders the mixin gives it)."""
        flwr_log(
            logging.INFO,
            "\t├──> Offsite-tuning: sample %.2f of the nodes (at least %d) by (seed %d, round); wait for %d; "
            "emulator %s",
            self.sampling.fraction_train,
            self.sampling.min_train_nodes,
            self.sampling.seed,
            self.sampling.min_available_nodes,
            self.offer.path,
        )
        if self.privacy is not None:
            self.privacy.summary()  # the DP settings, then the base strategy's
        else:
            super().summary()

    # --- Flower's loop ----------------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, **kwargs: Any) -> Result:
        """Flower's ``Strategy.start`` for rounds ``len(history)+1 .. len(history)+num_rounds``.

        Server-side evaluation goes through the constructor's ``evaluate_fn``; ``start``'s own is not used.
        """
        if kwargs.pop("evaluate_fn", None) is not None:
            raise TypeError("pass evaluate_fn to the strategy's constructor, not to start()")
        self._spec = AdapterSpec.of(initial_arrays)
        self._offset = len(self.history)
        self._last_round = self._offset + num_rounds
        kwargs.setdefault("timeout", self.sampling.round_timeout)
        if self.check is not None:  # every wait for replies (handshakes, rounds) also watches the backend
            grid = CheckedGrid(grid, self.check)
        return super().start(
            grid, initial_arrays, num_rounds=num_rounds, evaluate_fn=self._end_round, **kwargs
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Wait for nodes (with a limit), handshake new ones, sample by partition, let the base strategy
        build the messages (tagged with the round, so a late reply is never taken for a later round's)."""
        flower_round, server_round = server_round, server_round + self._offset
        self._round_start = time.monotonic()
        record = self._record = RoundRecord(round=server_round)
        self._sampled = []
        sampling, offer = self.sampling, self.offer
        if self.privacy is not None:
            self.privacy.seed_round_(sampling.seed, server_round)
        if self.check is not None:
            self.check()
        # All nodes before the first round; later, enough to sample (a node that died is not waited for).
        wait_for = sampling.min_available_nodes if flower_round == 1 else sampling.min_train_nodes
        connected = await_nodes(
            grid, wait_for, sampling.node_timeout, sampling.proceed_without_nodes, self.check
        )
        new = [n for n in connected if n not in self.partitions and n not in self.refused]
        handshake(grid, new, offer.path, offer.sha256, offer.timeout, self, offer.num_partitions)
        record.rejections += [f"node {n}: {self.refused[n]}" for n in new if n in self.refused]
        k = max(int(len(connected) * sampling.fraction_train), sampling.min_train_nodes)
        chosen = choose_nodes(self.partitions, connected, k, sampling.seed, server_round)
        if not chosen:
            log.warning("round %d: no node has loaded the emulator; nothing to train", server_round)
            return []
        # The DP wrapper's configure_train keeps the global adapter, which it measures updates from.
        builder = super() if self.privacy is None else self.privacy
        sampled_grid = SampledGrid(grid, [n for _, n in chosen])
        messages = list(builder.configure_train(server_round, arrays, config, sampled_grid))
        for msg in messages:
            msg.metadata.group_id = str(server_round)
            if self.harmonizers is not None:
                msg.content[wire.HARMONIZERS] = self.harmonizers
        if self.harmonizers is not None and messages:
            record.harmonizer_bytes = self.harmonizers.count_bytes()
        self._sampled = [m.metadata.dst_node_id for m in messages]
        record.sampled = len(messages)
        record.sampled_partitions = [p for p, _ in chosen]
        record.bytes_sent = sum(_array_bytes(m) for m in messages)
        record.bytes_per_client = record.bytes_sent // max(len(messages), 1)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop bad replies (logged with node id and reason), aggregate the rest with the base strategy.

        A sampled node that did not reply (it died, or is slower than the round timeout) is recorded as
        missing; a reply to another round's message is dropped.
        """
        server_round += self._offset
        replies = list(replies)
        record = self._current_record(server_round)
        record.replied = len(replies)
        record.bytes_received = sum(_array_bytes(m) for m in replies if m.has_content())
        # A SuperLink answers for a node that went offline with an error reply from another source id, so
        # only as many sampled nodes as there are unanswered messages count as missing.
        unanswered = sorted(set(self._sampled) - {m.metadata.src_node_id for m in replies})
        for node in unanswered[: max(0, len(self._sampled) - len(replies))]:
            record.missing += 1
            record.rejections.append(f"node {node}: no reply within {self.sampling.round_timeout:g} s")
            log.warning("round %d: no reply from node %d within the round timeout", server_round, node)
        valid = []
        for msg in replies:
            problem = reply_problem(msg, self._spec_or_fail(), self.arrayrecord_key, self.weighted_by_key)
            if not problem and self.privacy is not None:
                problem = self.privacy.reply_problem(msg, self.arrayrecord_key)
            if msg.metadata.group_id not in ("", str(server_round)):  # "": not sent by configure_train
                problem = f"a reply to round {msg.metadata.group_id or '?'}'s message, not this round's"
            if problem:
                self._reject(record, msg, problem)
            else:
                valid.append(msg)
        valid, odd = majority_metric_keys(valid)
        for msg in odd:
            self._reject(record, msg, "metric keys differ from the other replies'")
        record.aggregated = len(valid)
        record.empty = not valid
        record.workers = sorted({w for m in valid if (w := _worker(m))})
        if not valid:
            log.warning("round %d: no valid replies; the global adapter is unchanged", server_round)
            return None, None
        # Fixed order (by partition) makes the float sums, hence the adapter, reproducible.
        valid.sort(key=lambda m: (self.partitions.get(m.metadata.src_node_id, -1), m.metadata.src_node_id))
        if self.privacy is None:
            arrays, metrics = super().aggregate_train(server_round, valid)
        else:
            arrays, metrics, record.privacy = self.privacy.aggregate_train(server_round, valid)
        if metrics is not None:
            record.client_metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            record.train_loss = record.client_metrics.get(wire.TRAIN_LOSS)
        return (self._spec_or_fail().cast(arrays) if arrays is not None else None), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: offsite-tuning is evaluated on the server (plug-in and emulator)."""
        return []

    # --- checkpoint state -------------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The base strategy's server-optimiser state (FedAdam's moments, FedAvgM's momentum) and the
        re-aligned harmonizers, flattened."""
        state: dict[str, np.ndarray] = {}
        for attr in _STATE_ATTRS:
            value = getattr(self, attr, None)
            items = value.items() if isinstance(value, dict) else enumerate(value or [])
            state.update({f"{attr}/{k}": np.asarray(v) for k, v in items})
        harmonizers = self.harmonizers.items() if self.harmonizers is not None else []
        state.update({f"{_HARMONIZERS}/{k}": a.numpy() for k, a in harmonizers})
        return state

    def restore_(self, history: Sequence[RoundRecord], state: Mapping[str, np.ndarray]) -> None:
        """Continue after the rounds in ``history`` with the server-optimiser ``state`` (and re-aligned
        harmonizers) saved with them; the caller puts ``harmonizers`` back into its own emulator."""
        self.history = list(history)
        saved = {k.split("/", 1)[1]: v for k, v in state.items() if k.split("/", 1)[0] == _HARMONIZERS}
        self.harmonizers = ArrayRecord({k: Array(v) for k, v in saved.items()}) if saved else None
        if self.privacy is not None:
            self.privacy.restore_([r.privacy for r in self.history if r.privacy])
        for attr in _STATE_ATTRS:
            entries = {k.split("/", 1)[1]: v for k, v in state.items() if k.split("/", 1)[0] == attr}
            if not entries or not hasattr(self, attr):
                continue
            if attr == "momentum_vector":
                setattr(self, attr, [entries[str(i)] for i in range(len(entries))])
            else:
                setattr(self, attr, dict(entries))

    # --- helpers ----------------------------------------------------------------------------------------
    def _end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Flower calls this with round 0 before training (the server app evaluates zero-shot itself).
        if server_round == 0:
            return None
        server_round += self._offset
        record = self._current_record(server_round)
        schedule = self.evaluation
        with_emulator = _due(server_round, schedule.emulator_every, self._last_round)
        # An adapter no round has changed is the initial one: scoring it would report untrained numbers.
        trained = not record.empty or any(not r.empty for r in self.history)
        evaluate = (
            schedule.evaluate_fn is not None
            and trained
            and (with_emulator or _due(server_round, schedule.plug_in_every, self._last_round))
        )
        if self.realign is not None:  # first: the evaluation of the emulator sees the re-aligned one
            start = time.monotonic()
            self.harmonizers, numbers = self.realign(server_round, arrays)
            record.realign = {**numbers, "seconds": time.monotonic() - start}
        start = time.monotonic()
        metrics = dict(schedule.evaluate_fn(server_round, arrays, with_emulator)) if evaluate else {}
        fill_accuracies(record, metrics)
        record.eval_seconds = time.monotonic() - start
        record.seconds = time.monotonic() - self._round_start
        self.history.append(record)
        log.info(progress_line(record, self._last_round))
        if self.on_round_end is not None:
            self.on_round_end(record, arrays)
        return MetricRecord({k: float(v) for k, v in metrics.items()})

    def _current_record(self, server_round: int) -> RoundRecord:
        if self._record is None or self._record.round != server_round:
            self._record = RoundRecord(round=server_round)
        return self._record

    def _reject(self, record: RoundRecord, msg: Message, problem: str) -> None:
        node = msg.metadata.src_node_id
        record.rejected += 1
        record.rejections.append(f"node {node}: {problem}")
        log.warning("round %d: dropped the reply of node %d: %s", record.round, node, problem)

    def _spec_or_fail(self) -> AdapterSpec:
        if self._spec is None:
            raise RuntimeError("the adapter spec is unset: call start() (or set_adapter_spec) first")
        return self._spec

    def set_adapter_spec(self, arrays: ArrayRecord) -> None:
        """Fix the keys, shapes and dtypes replies must match (``start`` uses the initial adapter's)."""
        self._spec = AdapterSpec.of(arrays)


class _BaseAggregation(Strategy):
    """The base strategy's own ``configure_train`` and ``aggregate_train`` of an ``OffsiteTuning``, as a
    Strategy a Flower DP wrapper can wrap: the wrapper then sits inside the offsite strategy's reply
    checks."""

    def __init__(self, strategy: OffsiteTuning) -> None:
        self._base = super(OffsiteTuning, strategy)  # e.g. FedAvg's methods bound to the offsite strategy

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._base.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self._base.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # offsite-tuning is evaluated on the server

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        self._base.summary()


def _due(server_round: int, every: int, last_round: int) -> bool:
    # Every k rounds (0: never on a schedule) and always in the last round.
    return server_round == last_round or (every > 0 and server_round % every == 0)


def _worker(reply: Message) -> str:
    info = reply.content.config_records.get(wire.INFO)
    return str(info.get(wire.INFO_WORKER, "")) if info is not None else ""


def _array_bytes(msg: Message) -> int:
    return sum(record.count_bytes() for record in msg.content.array_records.values())
