"""The data owner's Flower ClientApp: load the emulator once, then train the adapter each round.

The message contract is documented on ``strategies.offsite.OffsiteTuning``; keys live in ``strategies.keys``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.runtime import cached_emulator, local_update, worker_id
from clients.settings import ClientSettings, NodeSettings
from strategies import keys

app = ClientApp()


@app.query(keys.QUERY_EMULATOR)
def introduce(msg: Message, context: Context) -> Message:
    """First contact: load (and verify) the emulator, report the partition this node holds."""
    # Parse config: where the bundle is (the node's own path wins) and which hash it must have.
    node = NodeSettings.from_node_config(context.node_config)
    config = msg.content[keys.CONFIG]
    # Load the emulator into this process's cache.
    loaded = cached_emulator(node.bundle(str(config[keys.EMULATOR_PATH])), str(config[keys.EMULATOR_SHA256]))
    # Reply with what the server needs for sampling.
    info = ConfigRecord({keys.INFO_PARTITION_ID: node.partition_id, keys.INFO_EMULATOR_SHA256: loaded.sha256})
    return Message(RecordDict({keys.INFO: info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round: train the received global adapter on this node's partition and send it back."""
    # Parse config: the server's training settings and this node's partition / bundle.
    settings = ClientSettings.from_record(msg.content[keys.CONFIG])
    node = NodeSettings.from_node_config(context.node_config)
    global_adapter = msg.content[keys.ARRAYS].to_torch_state_dict()
    # Load partition and emulator (cached), reset the adapter to the global one, train (one call).
    result, num_examples = local_update(settings, node, global_adapter)
    # Pack the reply: the adapter (fp32) and the numbers FedAvg weighs and logs.
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: num_examples,
            keys.TRAIN_LOSS: float(result.mean_loss),
            keys.TRAIN_STEPS: result.steps,
            keys.TRAIN_SECONDS: float(result.seconds),
            keys.STEP_SECONDS: float(result.seconds / result.steps),
            keys.PEAK_MEMORY: int(result.peak_memory),
        }
    )
    info = ConfigRecord({keys.INFO_WORKER: worker_id()})  # placement, shown in the round record
    content = RecordDict({keys.ARRAYS: ArrayRecord(result.state), keys.METRICS: metrics, keys.INFO: info})
    return Message(content, reply_to=msg)
