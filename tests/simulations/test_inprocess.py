"""The in-process backend's grid with a ClientApp of this module: what each node sees (its context, a copy of
its message), and that a client's error and a client's CPU share stay the client's. A whole run on it, against
the same run on Ray, is in test_simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from simulations.inprocess import InProcessGrid
from strategies.nodes import CheckedGrid
from strategies.replies import AdapterSpec, reply_problem

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Counts its calls in the node's state, changes what it received, raises for partition 1."""
    partition = int(context.node_config["partition-id"])
    calls = context.state.config_records.get("calls", ConfigRecord({"n": 0}))
    calls["n"] = int(calls["n"]) + 1
    context.state["calls"] = calls
    torch.set_num_threads(1)  # as a client with simulation.client_num_cpus = 1 does
    if partition == 1:
        raise ValueError(f"partition {partition} fails")
    msg.content["arrays"]["w"] = Array(np.full(2, 9.0, np.float32))  # a client changing its copy
    info = ConfigRecord(
        {"partition": partition, "of": int(context.node_config["num-partitions"]), "calls": calls["n"]}
    )
    return Message(RecordDict({"arrays": msg.content["arrays"], "info": info}), reply_to=msg)


@pytest.fixture
def grid() -> InProcessGrid:
    run = Run.create_empty(run_id=7)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, 1
    return InProcessGrid(app, num_nodes=3, run=run)


def messages(grid: InProcessGrid, arrays: ArrayRecord) -> list[Message]:
    return [
        Message(RecordDict({"arrays": arrays}), dst_node_id=n, message_type=MessageType.TRAIN)
        for n in grid.get_node_ids()
    ]


def test_each_node_has_its_partition_and_its_state_and_gets_a_copy_of_its_message(grid):
    nodes = grid.get_node_ids()
    assert len(set(nodes)) == 3 and not set(nodes) & {0, 1, 2}  # never a partition id
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    for round_calls in (1, 2):
        sent = messages(grid, arrays)
        replies = grid.send_and_receive(sent)
        assert [r.metadata.reply_to_message_id for r in replies] == [m.metadata.message_id for m in sent]
        good = {r.metadata.src_node_id: r.content["info"] for r in replies if not r.has_error()}
        assert {n: (i["partition"], i["of"], i["calls"]) for n, i in good.items()} == {
            nodes[0]: (0, 3, round_calls),
            nodes[2]: (2, 3, round_calls),
        }
    assert np.array_equal(arrays["w"].numpy(), np.zeros(2))  # the server's message is its own


def test_a_client_error_is_an_error_reply_and_its_cpu_share_does_not_outlive_the_message(grid):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the server's share; the client takes 1
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    sent = messages(grid, arrays)
    try:
        replies = CheckedGrid(grid, check=lambda: None).send_and_receive(sent, timeout=60)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    failed = [r for r in replies if r.has_error()]
    assert len(replies) == 3 and [r.metadata.src_node_id for r in failed] == [sent[1].metadata.dst_node_id]
    assert (
        reply_problem(failed[0], AdapterSpec.of(arrays))
        == "client error (code 2): ValueError: partition 1 fails"
    )
    assert torch.get_num_threads() == threads


def test_a_message_to_a_node_that_does_not_exist_gets_no_reply(grid):
    lost = Message(RecordDict({}), dst_node_id=12345, message_type=MessageType.TRAIN)
    assert grid.push_messages([lost]) == [] and grid.send_and_receive([lost]) == []
