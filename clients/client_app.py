"""The data owner's Flower ClientApp: load the emulator once, then train the adapter each round.

The message contract is documented on ``strategies.offsite.OffsiteTuning`` and defined in
``strategies.wire``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.runtime import cached_emulator, local_update, worker_id
from strategies import wire
from strategies.wire import ClientSettings, NodeSettings, TrainMetrics

app = ClientApp()


@app.query(wire.QUERY_EMULATOR)
def introduce(msg: Message, context: Context) -> Message:
    """First contact: load (and verify) the emulator, report the partition this node holds."""
    # Parse config: where the bundle is (the node's own path wins) and which hash it must have.
    node = NodeSettings.from_node_config(context.node_config)
    config = msg.content[wire.CONFIG]
    # Load the emulator into this process's cache.
    loaded = cached_emulator(node.bundle(str(config[wire.EMULATOR_PATH])), str(config[wire.EMULATOR_SHA256]))
    # Reply with what the server needs for sampling.
    info = ConfigRecord(
        {
            wire.INFO_PARTITION_ID: node.partition_id,
            wire.INFO_NUM_PARTITIONS: node.num_partitions,
            wire.INFO_EMULATOR_SHA256: loaded.sha256,
        }
    )
    return Message(RecordDict({wire.INFO: info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round: train the received global adapter on this node's partition and send it back."""
    # Parse config: the server's training settings and this node's partition / bundle.
    settings = ClientSettings.from_record(msg.content[wire.CONFIG])
    node = NodeSettings.from_node_config(context.node_config)
    global_adapter = msg.content[wire.ARRAYS].to_torch_state_dict()
    sent = msg.content.array_records.get(wire.HARMONIZERS)  # with re-alignment on, after its first round
    harmonizers = sent.to_torch_state_dict() if sent is not None else None
    # Load partition and emulator (cached), reset the adapter to the global one and the harmonizers to the
    # sent (or the bundle's own), train (one call).
    result, num_examples = local_update(settings, node, global_adapter, harmonizers)
    # Pack the reply: the adapter (fp32) and the numbers FedAvg weighs and logs.
    metrics = TrainMetrics(
        num_examples=num_examples,
        train_loss=result.mean_loss,
        train_steps=result.steps,
        train_seconds=result.seconds,
        step_seconds=result.seconds / result.steps,
        peak_memory_bytes=result.peak_memory,
    ).to_record()
    info = ConfigRecord({wire.INFO_WORKER: worker_id()})  # placement, shown in the round record
    content = RecordDict({wire.ARRAYS: ArrayRecord(result.state), wire.METRICS: metrics, wire.INFO: info})
    return Message(content, reply_to=msg)
