"""Client partitions: exact cover of the training split, determinism, argument checks."""

from __future__ import annotations

import random

import pytest

from clients.partition import partition
from emulator.data.tasks import MCExample


def _examples(n: int) -> list[MCExample]:
    rng = random.Random(n)
    return [MCExample(f"context {i}", (" a", " b", " c", " d"), rng.randrange(4)) for i in range(n)]


def _all_partitions(examples: list[MCExample], k: int, **kw) -> list[list[MCExample]]:
    return [partition(examples, k, pid, **kw) for pid in range(k)]


def _assert_exact_cover(examples: list[MCExample], parts: list[list[MCExample]]) -> None:
    flat = [e for part in parts for e in part]
    assert len(flat) == len(examples) and set(flat) == set(examples)  # examples are distinct by construction


@pytest.mark.parametrize(("n", "k"), [(2000, 8), (200, 4)])
def test_iid_partitions_cover_once_and_are_balanced(n: int, k: int):
    examples = _examples(n)
    parts = _all_partitions(examples, k, seed=1)
    _assert_exact_cover(examples, parts)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts[0] != examples[: len(parts[0])]  # shuffled, not contiguous slices of the input


@pytest.mark.parametrize(("n", "k", "alpha"), [(2000, 8, 0.5), (200, 4, 0.5), (200, 4, 0.1)])
def test_dirichlet_partitions_cover_once(n: int, k: int, alpha: float):
    examples = _examples(n)
    parts = _all_partitions(examples, k, scheme="dirichlet", dirichlet_alpha=alpha, seed=0)
    _assert_exact_cover(examples, parts)
    assert min(map(len, parts)) >= 1


def test_dirichlet_skews_labels():
    examples = _examples(2000)
    parts = _all_partitions(examples, 8, scheme="dirichlet", dirichlet_alpha=0.1, seed=0)
    shares = [sum(e.label == 0 for e in part) / len(part) for part in parts]
    assert max(shares) - min(shares) > 0.3  # IID shares would all be near 0.25


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_seeded(scheme: str):
    examples = _examples(200)
    assert partition(examples, 4, 2, scheme=scheme, seed=5) == partition(
        examples, 4, 2, scheme=scheme, seed=5
    )
    assert partition(examples, 4, 2, scheme=scheme, seed=5) != partition(
        examples, 4, 2, scheme=scheme, seed=6
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_partitions=4, partition_id=4), r"partition_id=4 is out of range; allowed 0\.\.3"),
        (dict(num_partitions=4, partition_id=-1), r"partition_id=-1 is out of range"),
        (dict(num_partitions=0, partition_id=0), r"num_partitions=0 must be at least 1"),
        (
            dict(num_partitions=2, partition_id=0, scheme="shards"),
            r"scheme='shards' is unknown; use one of iid",
        ),
        (
            dict(num_partitions=2, partition_id=0, dirichlet_alpha=0.0),
            r"dirichlet_alpha=0.0 must be positive",
        ),
        (
            dict(num_partitions=20, partition_id=0),
            r"num_partitions=20 exceeds the 10 examples; use at most 10",
        ),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        partition(_examples(10), **kwargs)


def test_impossible_dirichlet_minimum_says_what_to_change():
    with pytest.raises(
        ValueError, match=r"dirichlet_alpha=0.01 gave a client fewer than min_partition_size=50"
    ):
        partition(_examples(200), 4, 0, scheme="dirichlet", dirichlet_alpha=0.01, min_partition_size=50)
