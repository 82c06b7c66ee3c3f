"""The ClientApp on a real tiny emulator bundle, called directly (no Ray), and the local training loop."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients import runtime
from clients.client_app import app
from emulator.config import AdapterConfig, TrainConfig
from emulator.data.encoding import training_batches
from emulator.data.tasks import load_task
from emulator.lm.models import load_model
from emulator.scaleot.blocks import adapter_layers
from emulator.scaleot.bundle import load_emulator
from emulator.scaleot.realign import harmonizer_state
from emulator.tuning.adapters import adapter_state, prepare_adapter_
from emulator.tuning.training import train_adapter
from simulations.run_config import load_config
from simulations.runner import prepare_bundle
from simulations.server.evaluation import initial_adapter
from strategies import wire
from strategies.wire import ClientSettings, NodeSettings, TrainMetrics


@pytest.fixture(scope="module")
def bundle() -> str:
    """The tiny.toml emulator bundle (built once into the user cache, then reused)."""
    return str(prepare_bundle(load_config("simulations/configs/tiny.toml")))


@pytest.fixture(autouse=True)
def one_thread():
    # With torch already imported, OMP_WAIT_POLICY can no longer be set; two spinning OpenMP threads on a
    # busy 2-core box make the tiny model's steps ~50x slower than one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def context(partition_id: int = 1) -> Context:
    node_config = {wire.NODE_PARTITION_ID: partition_id, wire.NODE_NUM_PARTITIONS: 4}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def settings(bundle: str, **changes) -> ClientSettings:
    train = TrainConfig(lr=1e-3, batch_size=8, local_steps=2, max_length=64)
    values = dict(emulator_path=bundle, emulator_sha256=runtime.bundle_sha256(bundle), train=train, seed=5)
    return ClientSettings(**(values | changes))


def global_adapter(bundle: str) -> ArrayRecord:
    emulator, _ = load_emulator(bundle)
    return ArrayRecord(initial_adapter(emulator.model, emulator.adapter_positions(), AdapterConfig(), seed=0))


def train_message(adapter: ArrayRecord, config: ConfigRecord, server_round: int = 1) -> Message:
    config[wire.SERVER_ROUND] = server_round
    content = RecordDict({wire.ARRAYS: adapter, wire.CONFIG: config})
    return Message(content, dst_node_id=7, message_type=MessageType.TRAIN)


def test_client_app_trains_the_adapter_and_loads_the_emulator_once(bundle):
    runtime._EMULATOR = None  # a fresh "process"
    loads = runtime.emulator_loads()
    adapter = global_adapter(bundle)
    config = settings(bundle).to_record()

    hello = Message(
        RecordDict({wire.CONFIG: ConfigRecord({wire.EMULATOR_PATH: bundle, wire.EMULATOR_SHA256: ""})}),
        dst_node_id=7,
        message_type=wire.QUERY_EMULATOR_TYPE,
    )
    info = app(hello, context()).content[wire.INFO]
    assert info[wire.INFO_PARTITION_ID] == 1
    assert info[wire.INFO_EMULATOR_SHA256] == runtime.bundle_sha256(bundle)

    first = app(train_message(adapter, config), context())
    second = app(train_message(adapter, config), context())
    assert runtime.emulator_loads() == loads + 1  # handshake and two rounds share one load

    arrays, metrics = first.content[wire.ARRAYS], first.content[wire.METRICS]
    assert list(arrays) == list(adapter)
    assert all(a.dtype == "float32" and a.shape == adapter[k].shape for k, a in arrays.items())
    assert math.isfinite(metrics[wire.TRAIN_LOSS]) and metrics[wire.TRAIN_STEPS] == 2
    assert metrics[wire.NUM_EXAMPLES] > 0
    changed = [k for k in arrays if not (arrays[k].numpy() == adapter[k].numpy()).all()]
    assert changed, "training left the adapter unchanged"
    # Same (seed, round, partition), same global adapter: same local update (what resume relies on).
    for key, array in second.content[wire.ARRAYS].items():
        assert (array.numpy() == arrays[key].numpy()).all(), key


def test_node_config_bundle_wins_and_a_foreign_emulator_is_refused(bundle, tmp_path):
    node = context()
    node.node_config[wire.NODE_EMULATOR_PATH] = bundle
    config = settings(bundle, emulator_path="/nonexistent/bundle").to_record()  # the node's path wins
    reply = app(train_message(global_adapter(bundle), config), node)
    assert reply.content[wire.METRICS][wire.NUM_EXAMPLES] > 0

    wrong = settings(bundle, emulator_sha256="0" * 64).to_record()
    with pytest.raises(ValueError, match="the server's is 000000000000"):
        app(train_message(global_adapter(bundle), wrong), context())


def test_missing_partition_id_names_the_node_config_flag(bundle):
    bare = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="node config lacks partition-id, num-partitions"):
        app(train_message(global_adapter(bundle), settings(bundle).to_record()), bare)


def test_node_and_metric_keys_are_derived_from_the_fields():
    # Pinned, so that a field rename that changes what a SuperNode's --node-config or a reply says shows.
    node = NodeSettings.from_node_config({"partition-id": 1, "num-partitions": "4", "num-threads": 2})
    assert node == NodeSettings(partition_id=1, num_partitions=4, emulator_path="", num_threads=2)
    metrics = TrainMetrics(10, 2, 3, 1.5, 0.5, 1024).to_record()
    assert dict(metrics) == {
        "num-examples": 10,
        "train_loss": 2.0,
        "train_steps": 3,
        "train_seconds": 1.5,
        "step_seconds": 0.5,
        "peak_memory_bytes": 1024,
    }
    assert isinstance(metrics[wire.TRAIN_LOSS], float) and wire.NUM_EXAMPLES == "num-examples"


def test_node_config_and_train_record_values_are_read_as_their_fields_declare():
    # Issue 23 §3: a node config or message record may carry any value as a string; bool("false") is true and
    # int(1.5) is 1, so each value is parsed by its field's type, strictly, with a one-line error.
    node = NodeSettings.from_node_config({"partition-id": "1", "num-partitions": "4"})
    assert (node.partition_id, node.num_partitions) == (1, 4)
    with pytest.raises(ValueError, match=r"^node config partition-id=1.5 must be an integer$"):
        NodeSettings.from_node_config({"partition-id": 1.5, "num-partitions": 4})
    record = dict(ClientSettings(emulator_path="/bundle").to_record())
    strings = {"checkpoint-blocks": "false", "bf16": "no", "lr": "0.001", "fail-partitions": ["1"]}
    parsed = ClientSettings.from_record(record | strings)
    assert (parsed.train.checkpoint_blocks, parsed.train.bf16, parsed.train.lr) == (False, False, 0.001)
    assert parsed.fail_partitions == (1,)
    assert ClientSettings.from_record(record | {"bf16": "true"}).train.bf16 is True
    with pytest.raises(ValueError, match=r"^train config bf16='maybe' must be true or false \(also 1 / 0"):
        ClientSettings.from_record(record | {"bf16": "maybe"})
    with pytest.raises(ValueError, match=r"^train config local-steps=2.5 must be an integer$"):
        ClientSettings.from_record(record | {"local-steps": 2.5})


def test_settings_round_trip_through_the_config_record(bundle):
    original = settings(
        bundle,
        adapter=AdapterConfig(mode="lora", lora_rank=4),
        fail_partitions=(2,),
        crash_partitions=(1,),
        slow_partitions=(0, 3),
        slow_seconds=2.5,
    )
    assert ClientSettings.from_record(original.to_record()) == original


def test_wire_keys_are_the_field_names_and_match_the_handshake_keys(bundle):
    # The keys are derived from the dataclass fields; this pins them, so a rename that changes the wire shows.
    record = settings(bundle, fail_partitions=(1,)).to_record()
    assert sorted(record) == sorted(
        "emulator-path emulator-sha256 task partition-scheme dirichlet-alpha seed num-threads "
        "fail-partitions adapter-mode lora-rank lora-alpha lora-dropout lr batch-size local-epochs "
        "local-steps max-length "
        "max-grad-norm weight-decay checkpoint-blocks bf16".split()
    )
    assert record[wire.EMULATOR_PATH] == bundle and isinstance(record["lr"], float)
    del record["lr"]
    with pytest.raises(ValueError, match="train config lacks 'lr'; is the server running the same scaleot"):
        ClientSettings.from_record(record)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_train_adapter_lowers_the_loss_and_proximal_term_holds_weights_back(mode, tokenizer):
    model, _ = load_model("tiny-llama")
    positions = {i: i for i in adapter_layers(8, 2, 2)}
    torch.manual_seed(0)
    prepare_adapter_(model, positions, AdapterConfig(mode=mode))
    start = adapter_state(model, positions)
    examples = load_task("synthetic").train[:16]

    def run(mu: float, steps: int = 4):
        from emulator.tuning.adapters import load_adapter_state_

        load_adapter_state_(model, positions, start)
        batches = training_batches(tokenizer, examples, batch_size=8, max_length=64, seed=0, steps=steps)
        return train_adapter(model, positions, batches, lr=1e-2, proximal_mu=mu, seed=0)

    free, held = run(0.0), run(1e4)
    assert free.steps == 4 and math.isfinite(free.mean_loss)

    def distance(result):
        return sum(float((result.state[k] - start[k]).norm()) for k in start)

    assert distance(held) < distance(free)


def harmonizer_message(adapter: ArrayRecord, config: ConfigRecord, harmonizers: dict | None) -> Message:
    msg = train_message(adapter, config)
    if harmonizers is not None:
        msg.content[wire.HARMONIZERS] = ArrayRecord(harmonizers)
    return msg


def test_sent_harmonizers_are_trained_on_and_a_message_without_them_gets_the_bundles_own(bundle):
    runtime._EMULATOR = None  # a fresh "process"
    adapter, config = global_adapter(bundle), settings(bundle).to_record()
    emulator, _ = load_emulator(bundle)
    own = harmonizer_state(emulator.model, emulator.layer_map)
    assert own, "tiny.toml's emulator has harmonizers"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sent = {k: v + 0.5 * torch.randn_like(v) for k, v in own.items()}

    def held() -> dict:
        return harmonizer_state(runtime._EMULATOR.model, runtime._EMULATOR.layer_map)

    plain = app(harmonizer_message(adapter, config, None), context()).content[wire.METRICS]
    realigned = app(harmonizer_message(adapter, config, sent), context()).content[wire.METRICS]
    assert all(torch.equal(v, sent[k]) for k, v in held().items())
    assert realigned[wire.TRAIN_LOSS] != plain[wire.TRAIN_LOSS]  # trained on the sent harmonizers
    again = app(harmonizer_message(adapter, config, None), context()).content[wire.METRICS]
    assert all(torch.equal(v, own[k]) for k, v in held().items())
    assert again[wire.TRAIN_LOSS] == plain[wire.TRAIN_LOSS]  # the bundle's own emulator, as before

    key = sorted(own)[0]
    app(harmonizer_message(adapter, config, sent), context())
    with pytest.raises(ValueError, match=rf"harmonizer state does not match .*shapes \['{key}: got \(2,\)"):
        app(harmonizer_message(adapter, config, sent | {key: torch.zeros(2)}), context())
    assert all(torch.equal(v, own[k]) for k, v in held().items())  # a refused message leaves it as shipped
