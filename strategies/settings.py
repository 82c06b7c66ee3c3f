"""The offsite strategy's settings, one group per concern: the emulator the handshake offers, which nodes are
sampled each round and how long the server waits for them, and when the server evaluates.

``simulations.server.federation`` fills them from the run config (``federation.*``, ``evaluation.*``); the
strategy (``strategies.offsite.OffsiteTuning``) reads them. Torch- and Flower-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

# (server_round, global adapter, evaluate the emulator too?) -> metrics named by wire.PLUG_IN_ACC etc.
EvaluateFn = Callable[[int, "ArrayRecord", bool], Mapping[str, float]]
# (server_round, global adapter) -> (the emulator's harmonizers after re-alignment, numbers for the round
# record: loss_before, loss_after, steps)
RealignFn = Callable[[int, "ArrayRecord"], tuple["ArrayRecord", Mapping[str, float]]]


@dataclass(frozen=True)
class EmulatorOffer:
    """The emulator bundle the one-time handshake offers each node (``query.emulator``), and what it checks.

    Attributes:
        path: bundle directory sent to the node (simulation: a path every client can read).
        sha256: the bundle manifest's hash; a node reporting another is refused ("" skips the check).
        num_partitions: how many partitions the data is split into; a node reporting a partition id outside
            ``[0, num_partitions)``, another count, or a partition a connected node holds is refused with its
            reason (0: not checked).
        timeout: seconds to wait for the handshake replies (``federation.handshake_timeout``).
    """

    path: str
    sha256: str = ""
    num_partitions: int = 0
    timeout: float = 600.0


@dataclass(frozen=True)
class Sampling:
    """Which nodes train each round, and how long the server waits for them.

    Attributes:
        seed: run seed; sampling depends on (seed, round), so a resumed run samples what an uninterrupted one
            would.
        fraction_train, min_train_nodes: as in Flower's FedAvg: ``max(int(connected · fraction_train),
            min_train_nodes)`` nodes are sampled each round.
        min_available_nodes: nodes to wait for before the first round of ``start``.
        node_timeout: seconds to wait before a round for the nodes it needs: ``min_available_nodes`` before
            the first round of ``start``, ``min_train_nodes`` later (a dead node does not stall the run).
        proceed_without_nodes: after ``node_timeout``, train on the nodes connected instead of raising.
        round_timeout: seconds to wait for train replies; replies not in by then are recorded as missing, and
            a reply to an earlier round's message is never aggregated.
    """

    seed: int = 0
    fraction_train: float = 1.0
    min_train_nodes: int = 1
    min_available_nodes: int = 1
    node_timeout: float = 600.0
    proceed_without_nodes: bool = False
    round_timeout: float = 3600.0


@dataclass(frozen=True)
class ServerEvaluation:
    """Server-side evaluation of the global adapter, through a callable (as Flower's ``evaluate_fn``).

    Attributes:
        evaluate_fn: ``(round, adapter, with_emulator) -> metrics``; None skips evaluation.
        emulator_every: evaluate the emulator fine-tuned every k rounds and in the last (0: last only).
        plug_in_every: evaluate plug-in every k rounds, in the last and with every emulator evaluation (0:
            those only); a round evaluating nothing has no accuracies in its record.
    """

    evaluate_fn: EvaluateFn | None = None
    emulator_every: int = 1
    plug_in_every: int = 1
