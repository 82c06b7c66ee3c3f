"""Split a task's training examples among simulated data owners with Flower Datasets' partitioners.

Every client recomputes the whole partitioning from the same arguments and keeps its own share, so clients in
different processes (Ray actors, SuperNodes) agree on who holds what without talking to each other.
"""

from __future__ import annotations

import logging
import random
import warnings

from emulator.config import PARTITION_SCHEMES
from emulator.data.tasks import MCExample

log = logging.getLogger(__name__)


def partition(
    examples: list[MCExample],
    num_partitions: int,
    partition_id: int,
    scheme: str = "iid",
    dirichlet_alpha: float = 0.5,
    seed: int = 0,
    min_partition_size: int | None = None,
) -> list[MCExample]:
    """One client's share of the training examples.

    Args:
        examples: the task's training split.
        num_partitions: number of clients.
        partition_id: this client's index, ``0 <= partition_id < num_partitions``.
        scheme: ``iid`` (shuffled equal shards), ``dirichlet`` (label skew: for each correct-answer index,
            the share of each client is drawn from Dirichlet(``dirichlet_alpha``); smaller, more skew) or
            ``dirichlet-length`` (feature skew: the same per quartile of context length in characters, so
            clients differ in their inputs while each keeps whatever answer positions those inputs have).
        dirichlet_alpha: Dirichlet concentration, only for the ``dirichlet`` schemes.
        seed: seed of the shuffle / the Dirichlet draws.
        min_partition_size: ``dirichlet`` redraws (up to 10 times) until every client has at least this many
            examples. Default: min(10, n // (2 * num_partitions)), at least 1, so small tasks still partition.

    Returns:
        The client's examples. The partitions of all ids are disjoint and together hold every example once.

    Raises:
        ValueError: an argument out of range, or Dirichlet draws that never meet ``min_partition_size``.
    """
    _check(examples, num_partitions, partition_id, scheme, dirichlet_alpha)
    from datasets import Dataset  # lazy: importing datasets and flwr_datasets costs seconds
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    order = list(range(len(examples)))
    # IidPartitioner takes contiguous shards without shuffling, so shuffle first (harmless for Dirichlet).
    random.Random(seed).shuffle(order)
    dataset = Dataset.from_dict(
        {
            "index": order,
            "label": [examples[i].label for i in order],
            "length": _length_quartiles(examples, order),
        }
    )
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
    else:
        if min_partition_size is None:
            min_partition_size = max(1, min(10, len(examples) // (2 * num_partitions)))
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label" if scheme == "dirichlet" else "length",
            alpha=dirichlet_alpha,
            min_partition_size=min_partition_size,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    partitioner.dataset = dataset  # the setter accepts one assignment only; the partitioner is fresh here
    with warnings.catch_warnings():
        # Flower warns on every Dirichlet redraw; the outcome (success or our ValueError) is what matters.
        warnings.simplefilter("ignore", UserWarning)
        try:
            shard = partitioner.load_partition(partition_id)
        except ValueError as error:
            if scheme == "iid":
                raise
            raise ValueError(
                f"{scheme} partitioning with dirichlet_alpha={dirichlet_alpha} gave a client fewer than "
                f"min_partition_size={min_partition_size} of {len(examples)} examples in 10 draws; raise "
                "dirichlet_alpha or lower min_partition_size"
            ) from error
    return [examples[i] for i in shard["index"]]


def _length_quartiles(examples: list[MCExample], order: list[int]) -> list[int]:
    """The quartile (0-3) of each example's context length in characters, in ``order``; ties by index."""
    ranked = sorted(range(len(examples)), key=lambda i: (len(examples[i].context), i))
    quartile = {i: 4 * rank // len(examples) for rank, i in enumerate(ranked)}
    return [quartile[i] for i in order]


def _check(
    examples: list[MCExample], num_partitions: int, partition_id: int, scheme: str, dirichlet_alpha: float
) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions={num_partitions} must be at least 1")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id={partition_id} is out of range; allowed 0..{num_partitions - 1}")
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"scheme={scheme!r} is unknown; use one of {', '.join(PARTITION_SCHEMES)}")
    if dirichlet_alpha <= 0:
        raise ValueError(f"dirichlet_alpha={dirichlet_alpha} must be positive")
    if len(examples) < num_partitions:
        raise ValueError(
            f"num_partitions={num_partitions} exceeds the {len(examples)} examples; "
            f"use at most {len(examples)}"
        )
