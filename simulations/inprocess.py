"""The in-process simulation backend (``simulation.backend = "inprocess"``): every simulated SuperNode's
ClientApp runs in this process, one message after another, behind a Flower ``Grid``.

What runs is what runs on Ray: the ServerApp (``server_app_for``, in this thread), the strategy, the ClientApp
(``clients.client_app.app``, called as ``app(message, context)`` with a ``Context`` per node whose node config
holds ``partition-id`` / ``num-partitions`` and whose state lasts the run), real training and real outputs.
Only the transport differs: no Ray and no client processes, so a run starts in seconds, and with the same seed
it trains the adapter a Ray run trains (tests/simulations/test_simulation.py checks both on one config). As
Flower's simulation engine does, a ClientApp that raises sends an error reply, and the round goes on without
it.

Ours, not Flower's: clients run one after another, so a round takes as long as all its clients together and
``federation.round_timeout`` cuts no client off; the test hooks that need a process per client
(``crash_partitions``) or a cut-off (``slow_partitions``) are refused by the run config.
"""

from __future__ import annotations

import copy
import logging
import secrets
import traceback
from collections.abc import Iterable
from uuid import uuid4

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)


class InProcessGrid(Grid):
    """A Flower ``Grid`` whose ``num_nodes`` SuperNodes are ``client_app`` in this process.

    ``push_messages`` queues messages (each gets an id, as the SuperLink gives it); ``pull_messages`` delivers
    the queued ones asked for, in the order they were pushed, and returns the replies. Each ClientApp receives
    a copy of its message (as over the wire, it cannot change the server's), with its node's ``Context``.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, run: Run) -> None:
        self._client_app, self._run = client_app, run
        self._contexts: dict[int, Context] = {}
        for partition in range(num_nodes):
            node_id = _new_node_id(self._contexts)
            node_config = {PARTITION_ID_KEY: partition, NUM_PARTITIONS_KEY: num_nodes}
            self._contexts[node_id] = Context(run.run_id, node_id, node_config, RecordDict(), {})
        self._queued: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Queue ``messages``; one for a node that does not exist is dropped, as Flower's link state does."""
        ids = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            if node_id not in self._contexts:
                log.warning("dropped a message to node %d, which does not exist", node_id)
                continue
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id  # how Flower's own grids set it
            self._queued[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Deliver the queued messages among ``message_ids`` (in the order pushed); return their replies."""
        wanted = set(message_ids)
        return [self._deliver(self._queued.pop(i)) for i in [i for i in self._queued if i in wanted]]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Every message's reply: clients run one after another until all have answered (``timeout`` is not
        a cut-off here, see the module docstring)."""
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        threads = torch.get_num_threads()
        try:
            reply = self._client_app(copy.deepcopy(message), self._contexts[node_id])
        except Exception as error:  # as Flower's simulation engine does: the error goes back as the reply
            # Flower's wording, around the traceback a client process sends: its last line names the error.
            reason = f"{type(error)}:<'{traceback.format_exc().strip()}'>"
            reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
        finally:
            # A client's CPU share (torch.set_num_threads) is its own process's setting on Ray; here it would
            # outlive the message and slow the server's scoring down.
            torch.set_num_threads(threads)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return reply


def run_inprocess(server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
    """Run ``server_app`` in this thread against ``num_nodes`` SuperNodes of ``client_app`` in this process.

    Exceptions of the ServerApp propagate as they are (client exceptions become error replies).
    """
    run = Run.create_empty(run_id=secrets.randbits(63))
    # Message() reads the process's task identity; run_simulation sets the same for its ServerApp.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    grid = InProcessGrid(client_app, num_nodes, run)
    server_app(grid, Context(run.run_id, 0, {}, RecordDict(), {}))


def _new_node_id(taken: Iterable[int]) -> int:
    # Random 63-bit ids like the SuperLink's, so that nothing can mistake a node id for a partition id.
    while (node_id := secrets.randbits(63)) in {*taken, 0, SUPERLINK_NODE_ID}:
        pass
    return node_id
