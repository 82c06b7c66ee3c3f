"""The wire contract between the offsite-tuning strategy and the ClientApp, in one torch-free module.

Record keys name the records inside a ``RecordDict``; config and metric keys name the entries inside them.
What travels is defined once, as dataclasses, and the keys are derived from their field names
(``wire_key``): the server builds the train ``ConfigRecord`` with ``ClientSettings.to_record`` and the
ClientApp parses it back with ``ClientSettings.from_record``; a node's own config is ``NodeSettings``; a train
reply's numbers are ``TrainMetrics``. Styles: config keys are Flower's ``kebab-case`` (``server-round``,
``proximal-mu``), metric keys ``snake_case`` (``train_loss``, ``plug_in_acc``) except Flower's own
``num-examples``, which its FedAvg weighs by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from emulator import results
from emulator.config import AdapterConfig, TrainConfig
from emulator.config_parse import declared_type, parse_typed

if TYPE_CHECKING:  # flwr only where a record is built: the keys are imported by `scaleot --help` too
    from flwr.app import ConfigRecord, MetricRecord

# --- message types -------------------------------------------------------------------------------------
# First contact: the client loads (and verifies) the emulator and says which partition it holds.
QUERY_EMULATOR = "emulator"
QUERY_EMULATOR_TYPE = f"query.{QUERY_EMULATOR}"

# --- records inside a RecordDict -----------------------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the adapter, fp32, keyed "{original block index}.{name in block}"
CONFIG = "config"  # ConfigRecord: server -> client settings
METRICS = "metrics"  # MetricRecord: client -> server numbers
INFO = "info"  # ConfigRecord: client -> server facts (handshake: partition and emulator hash; train: worker)
# ArrayRecord, train only, with re-alignment on (federation.realign_steps): the emulator's harmonizers as the
# server re-aligned them after the last round, fp32, keyed "{original block index}.{name in harmonizer}"
HARMONIZERS = "harmonizers"


def wire_key(owner: str, name: str) -> str:
    """The config-record key of a field: its name with ``-`` (Flower's style); ``adapter.mode`` is
    ``adapter-mode`` (``mode`` alone would not say of what), every other nested field keeps its own name."""
    return ("adapter-mode" if (owner, name) == ("adapter", "mode") else name).replace("_", "-")


@dataclass(frozen=True)
class ClientSettings:
    """Everything the server sends with a train message besides the adapter.

    Attributes:
        emulator_path: the bundle the server wrote (used when the node config names none).
        emulator_sha256: manifest hash of that bundle; a client holding another emulator refuses to train.
        task: task name (``emulator.data.tasks.load_task``); the client trains on its partition of the train
            split.
        partition_scheme: one of ``emulator.config.PARTITION_SCHEMES`` (what each skews is said there).
        dirichlet_alpha: concentration of the Dirichlet split (smaller: more skewed).
        adapter: full adapter blocks or LoRA on them.
        train: the local training hyper-parameters.
        seed: run seed (task split, partitioning, per-round client seeds).
        num_threads: torch threads for the client (its CPU share); 0 leaves torch's default.
        fail_partitions: test hook: these partitions raise instead of training.
        crash_partitions: test hook: these partitions' client process exits (``os._exit``) mid-round.
        slow_partitions: test hook: these partitions sleep ``slow_seconds`` before training.
        slow_seconds: how long the slow partitions sleep.
        server_round: injected by Flower's FedAvg.
        proximal_mu: injected by Flower's FedProx (0 otherwise).
    """

    emulator_path: str
    emulator_sha256: str = ""
    task: str = "synthetic"
    partition_scheme: str = "iid"
    dirichlet_alpha: float = 0.5
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    num_threads: int = 0
    fail_partitions: tuple[int, ...] = ()
    crash_partitions: tuple[int, ...] = ()
    slow_partitions: tuple[int, ...] = ()
    slow_seconds: float = 0.0
    server_round: int = 0
    proximal_mu: float = 0.0

    def to_record(self) -> ConfigRecord:
        """The train ConfigRecord: one entry per field (``adapter`` and ``train`` flattened, see
        ``wire_key``); Flower's strategies add ``server-round`` and ``proximal-mu``; the test hooks
        (``fail-partitions`` etc.) only if set."""
        record: dict[str, Any] = {}
        for owner, spec in _wire_fields():
            value = getattr(getattr(self, owner) if owner else self, spec.name)
            if spec.name in _FLOWER_INJECTED or (spec.name in _TEST_HOOKS and not value):
                continue
            record[wire_key(owner, spec.name)] = _to_wire(value, spec)
        from flwr.app import ConfigRecord

        return ConfigRecord(record)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClientSettings:
        """Parse a train ConfigRecord.

        Raises:
            ValueError: a required key is missing (the message names it) or a value is out of range.
        """
        values: dict[str, dict[str, Any]] = {"": {}, "adapter": {}, "train": {}}
        for owner, spec in _wire_fields():
            key = wire_key(owner, spec.name)
            if key in record:
                values[owner][spec.name] = _from_wire(record[key], spec, f"train config {key}")
            elif spec.name not in _OPTIONAL:
                raise ValueError(f"train config lacks '{key}'; is the server running the same scaleot?")
        return cls(
            **values[""], adapter=AdapterConfig(**values["adapter"]), train=TrainConfig(**values["train"])
        )


# Keys a train record may lack: Flower adds the first two, the rest have a meaning when absent.
_FLOWER_INJECTED = ("server_round", "proximal_mu")
_TEST_HOOKS = ("fail_partitions", "crash_partitions", "slow_partitions", "slow_seconds")
_OPTIONAL = (*_FLOWER_INJECTED, "emulator_sha256", "num_threads", *_TEST_HOOKS)


def _wire_fields() -> list[tuple[str, Field]]:
    """(owner, field) of each wire value: ClientSettings' own, then AdapterConfig's and TrainConfig's."""
    own = [("", f) for f in fields(ClientSettings) if f.name not in ("adapter", "train")]
    return own + [("adapter", f) for f in fields(AdapterConfig)] + [("train", f) for f in fields(TrainConfig)]


def _to_wire(value: Any, spec: Field) -> Any:
    # ConfigRecord keeps one type per key: floats stay floats even when written as 1, tuples become lists.
    return list(value) if isinstance(value, tuple) else _cast(value, spec, spec.name)


def _from_wire(value: Any, spec: Field, name: str) -> Any:
    if spec.name.endswith("_partitions"):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name}={value!r} must be a list of partition ids")
        return tuple(parse_typed(v, int, f"{name}[{i}]") for i, v in enumerate(value))
    return _cast(value, spec, name)


def _cast(value: Any, spec: Field, name: str) -> Any:
    # Strictly, by the field's declared type: int(1.7) would round and bool("false") is true.
    kind = declared_type(spec)
    return parse_typed(value, kind, name) if kind else value


@dataclass(frozen=True)
class NodeSettings:
    """What the node itself knows (simulation: set by Flower; deployment: ``flower-supernode --node-config``).

    Attributes:
        partition_id: which partition of the task's train split this node holds.
        num_partitions: how many partitions the train split is cut into.
        emulator_path: a local bundle directory; takes precedence over the path the server sends.
        num_threads: torch threads; takes precedence over the server's value (0: not set).
    """

    partition_id: int
    num_partitions: int
    emulator_path: str = ""
    num_threads: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.partition_id < self.num_partitions:
            raise ValueError(
                f"node config partition-id={self.partition_id} must be in [0, num-partitions="
                f"{self.num_partitions})"
            )

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings:
        """Parse a node config.

        Raises:
            ValueError: ``partition-id`` or ``num-partitions`` is missing or out of range.
        """
        specs = {wire_key("", spec.name): spec for spec in fields(cls)}
        required = [k for k, spec in specs.items() if spec.default is MISSING]
        missing = [k for k in required if k not in node_config]
        if missing:
            raise ValueError(
                f"node config lacks {', '.join(missing)}; start the SuperNode with "
                '--node-config "partition-id=0 num-partitions=2 emulator-path=/path/to/bundle"'
            )
        return cls(
            **{
                s.name: _cast(node_config[k], s, f"node config {k}")
                for k, s in specs.items()
                if k in node_config
            }
        )

    def bundle(self, sent_path: str) -> str:
        """The emulator bundle this node uses: its own, else the one the server named."""
        return self.emulator_path or sent_path


# --- config keys (server -> client; node config), derived from the fields --------------------------------
SERVER_ROUND = wire_key("", "server_round")  # injected by Flower's FedAvg
# Injected by Flower's FedProx; the client adds (mu/2)·||w - w_global||² to its loss.
PROXIMAL_MU = wire_key("", "proximal_mu")
EMULATOR_PATH = wire_key("", "emulator_path")  # handshake and train: the bundle the server wrote
EMULATOR_SHA256 = wire_key("", "emulator_sha256")  # handshake and train: the manifest hash it must have
NODE_PARTITION_ID = wire_key("", "partition_id")  # set by the simulation or `--node-config`
NODE_NUM_PARTITIONS = wire_key("", "num_partitions")
NODE_EMULATOR_PATH = wire_key("", "emulator_path")
NODE_NUM_THREADS = wire_key("", "num_threads")

# --- info keys (client -> server) ----------------------------------------------------------------------
INFO_PARTITION_ID = NODE_PARTITION_ID  # handshake: the partition this node holds
INFO_NUM_PARTITIONS = NODE_NUM_PARTITIONS  # handshake: into how many partitions it splits the data
INFO_EMULATOR_SHA256 = EMULATOR_SHA256  # handshake: the hash of the bundle the node loaded
INFO_WORKER = "worker"  # train reply: where the client ran (Ray node id in a simulation, else host name)


@dataclass(frozen=True)
class TrainMetrics:
    """The numbers a train reply carries (its MetricRecord), keyed by ``metric_key`` of each field.

    Attributes:
        num_examples: examples trained on (FedAvg's weight).
        train_loss: mean training loss of the round.
        train_steps: optimiser steps taken.
        train_seconds: wall time of local training.
        step_seconds: ``train_seconds / train_steps``.
        peak_memory_bytes: peak memory during local training (``emulator.tuning.memory``: CUDA tensors or
            RSS).
    """

    num_examples: int
    train_loss: float
    train_steps: int
    train_seconds: float
    step_seconds: float
    peak_memory_bytes: int

    def to_record(self) -> MetricRecord:
        from flwr.app import MetricRecord

        return MetricRecord(
            {metric_key(s.name): _cast(getattr(self, s.name), s, s.name) for s in fields(self)}
        )


def metric_key(name: str) -> str:
    """The metric-record key of a field: its name, except Flower's ``num-examples``."""
    return "num-examples" if name == "num_examples" else name


NUM_EXAMPLES = metric_key("num_examples")
TRAIN_LOSS = metric_key("train_loss")
TRAIN_STEPS = metric_key("train_steps")
TRAIN_SECONDS = metric_key("train_seconds")
STEP_SECONDS = metric_key("step_seconds")
PEAK_MEMORY = metric_key("peak_memory_bytes")

# --- server-side evaluation results (evaluate_fn -> strategy): "{row}_{measure}" (MCResult.to_metrics), ---
# rows and measures from emulator.results
PLUG_IN = results.PLUG_IN  # full model + global adapter
EMULATOR_FT = results.EMULATOR_FT  # emulator + global adapter (emulator fine-tuned)
PLUG_IN_ACC = f"{PLUG_IN}_acc"
PLUG_IN_ACC_STDERR = f"{PLUG_IN}_acc_stderr"
EMULATOR_FT_ACC = f"{EMULATOR_FT}_acc"
EMULATOR_FT_ACC_STDERR = f"{EMULATOR_FT}_acc_stderr"
EVAL_N = "eval_n"  # number of test examples scored
