"""Which nodes take part: the emulator handshake with new nodes and the per-round sample by partition.

Sampling depends only on (seed, round) and the partitions of the eligible nodes, never on node ids or on
arrival order, so an interrupted and resumed run samples what an uninterrupted one does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from strategies import wire
from strategies.records import RunFailedError
from strategies.replies import last_line

log = logging.getLogger(__name__)


class Roster(Protocol):
    """What the handshake fills in (the offsite-tuning strategy is one)."""

    partitions: dict[int, int]  # node id -> partition id
    refused: dict[int, str]  # node id -> why it is never sampled


def sample_partitions(num_eligible: int, k: int, seed: int, server_round: int) -> list[int]:
    """Indices (sorted) of the ``k`` of ``num_eligible`` clients, ordered by partition id, trained this round.

    Depends only on (seed, round), so an interrupted and resumed run samples what an uninterrupted one does.
    """
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(i) for i in rng.choice(num_eligible, size=min(k, num_eligible), replace=False))


def choose_nodes(
    partitions: Mapping[int, int], connected: set[int], k: int, seed: int, server_round: int
) -> list[tuple[int, int]]:
    """(partition id, node id) of the ``k`` nodes trained this round, among the connected handshaken ones."""
    eligible = sorted((p, n) for n, p in partitions.items() if n in connected)
    return [eligible[i] for i in sample_partitions(len(eligible), k, seed, server_round)]


def await_nodes(
    grid: Grid,
    wait_for: int,
    timeout: float,
    proceed: bool = False,
    check: Callable[[], None] | None = None,
) -> set[int]:
    """The connected node ids, once at least ``wait_for`` are connected (polled every second).

    Args:
        timeout: seconds to wait (``federation.node_timeout``).
        proceed: after ``timeout``, return the nodes connected (if any) instead of raising
            (``federation.on_missing_nodes = "proceed"``).
        check: called at every poll; raises to abandon the wait (e.g. the simulation backend died).

    Raises:
        RunFailedError: fewer than ``wait_for`` nodes after ``timeout`` s (and not ``proceed``, or none).
    """
    start = time.monotonic()
    next_line = 0.0
    while len(nodes := set(grid.get_node_ids())) < wait_for:
        if check is not None:
            check()
        waited = time.monotonic() - start
        if waited >= timeout:
            if proceed and nodes:
                log.warning(
                    "%d of %d nodes connected after %.0f s; going on with them", len(nodes), wait_for, waited
                )
                return nodes
            raise RunFailedError(
                f"only {len(nodes)} of {wait_for} nodes connected after waiting {timeout:g} s "
                "(federation.node_timeout); start the missing SuperNodes, lower federation.num_clients, "
                'or set federation.on_missing_nodes="proceed"'
            )
        if waited >= next_line:  # a line every 30 s, not every poll
            log.info("waiting for nodes: %d connected, %d required", len(nodes), wait_for)
            next_line += 30.0
        time.sleep(min(1.0, timeout - waited))
    return nodes


def handshake(
    grid: Grid,
    nodes: list[int],
    emulator_path: str,
    sha256: str,
    timeout: float,
    roster: Roster,
    num_partitions: int = 0,
) -> None:
    """Ask ``nodes`` to load the emulator; record each one's partition in ``roster.partitions``, or why it
    is refused in ``roster.refused``: the handshake failed, it loaded another emulator, its partition id is
    outside ``[0, num_partitions)`` or it splits the data into another number of partitions (when
    ``num_partitions`` is given), or a connected node already holds its partition (one partition trained
    twice would count its data double). Replies are taken by node id, so which of two nodes claiming one
    partition keeps it does not depend on arrival order."""
    if not nodes:
        return
    config = ConfigRecord({wire.EMULATOR_PATH: emulator_path, wire.EMULATOR_SHA256: sha256})
    messages = [
        Message(RecordDict({wire.CONFIG: config}), dst_node_id=n, message_type=wire.QUERY_EMULATOR_TYPE)
        for n in nodes
    ]
    replies = sorted(grid.send_and_receive(messages, timeout=timeout), key=lambda r: r.metadata.src_node_id)
    connected = set(grid.get_node_ids())
    for reply in replies:
        node = reply.metadata.src_node_id
        problem, partition = _handshake_problem(reply, sha256, num_partitions)
        holder = next((n for n, p in roster.partitions.items() if p == partition and n in connected), None)
        if not problem and holder is not None:
            problem = (
                f"reports partition-id {partition}, which node {holder} already holds (check the nodes' "
                "--node-config partition-id: the same data would be trained twice)"
            )
        if problem:
            roster.refused[node] = problem
            log.warning("node %d refused: %s", node, problem)
        else:
            for gone in [n for n, p in roster.partitions.items() if p == partition]:  # disconnected since
                del roster.partitions[gone]
            roster.partitions[node] = partition
    for node in sorted(set(nodes) - {r.metadata.src_node_id for r in replies}):  # asked again next round
        log.warning(
            "node %d: no emulator handshake reply within %g s (federation.handshake_timeout)", node, timeout
        )


class CheckedGrid:
    """The grid, with a ``send_and_receive`` that calls ``check`` while it waits for replies.

    Flower's own waits out its whole timeout (up to an hour for a round) even when the simulation backend that
    would answer has died; this one polls with Flower's ``push_messages`` / ``pull_messages`` and stops as
    soon as ``check`` raises.
    """

    def __init__(self, grid: Grid, check: Callable[[], None], poll: float = 0.5) -> None:
        self._grid, self._check, self._poll = grid, check, poll

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push ``messages``; return the replies that arrive within ``timeout`` seconds (None: no limit).

        Raises:
            Whatever ``check`` raises, at the poll after it starts raising.
        """
        pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (end is None or time.monotonic() < end):
            self._check()
            arrived = list(self._grid.pull_messages(pending))
            replies += arrived
            pending -= {m.metadata.reply_to_message_id for m in arrived}
            if pending:
                time.sleep(self._poll)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class SampledGrid:
    """A view of the grid showing only the sampled nodes to the base strategy's sampling."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._node_ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _handshake_problem(reply: Message, sha256: str, num_partitions: int) -> tuple[str | None, int]:
    if reply.has_error():
        return f"emulator handshake failed: {last_line(reply.error.reason)}", -1
    info = reply.content.config_records.get(wire.INFO)
    if info is None or not isinstance(info.get(wire.INFO_PARTITION_ID), int):
        return "emulator handshake reply lacks an integer partition-id", -1
    theirs = info.get(wire.INFO_EMULATOR_SHA256, "")
    if sha256 and theirs != sha256:
        return f"loaded emulator {str(theirs)[:12]}…, the server's is {sha256[:12]}…", -1
    partition, split = int(info[wire.INFO_PARTITION_ID]), info.get(wire.INFO_NUM_PARTITIONS)
    if num_partitions and not 0 <= partition < num_partitions:
        return f"reports partition-id {partition}, outside [0, num-partitions={num_partitions})", -1
    if num_partitions and split is not None and split != num_partitions:
        return (
            f"splits the data into num-partitions={split}, the run into {num_partitions} "
            "(federation.num_clients): its partition would overlap others",
            -1,
        )
    return None, partition
