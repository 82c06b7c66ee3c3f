"""What a client is told: the server's train config and its own node config, parsed once into dataclasses.

The server builds the train ``ConfigRecord`` with ``ClientSettings.to_record`` and the ClientApp parses it
back with ``ClientSettings.from_record``: one definition of the wire format, its keys derived from the field
names (``wire_key``); record, message and metric keys are in ``strategies.keys``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any

from flwr.app import ConfigRecord

from emulator.config import AdapterConfig, TrainConfig
from strategies import keys


@dataclass(frozen=True)
class ClientSettings:
    """Everything the server sends with a train message besides the adapter.

    Attributes:
        emulator_path: the bundle the server wrote (used when the node config names none).
        emulator_sha256: manifest hash of that bundle; a client holding another emulator refuses to train.
        task: task name (``emulator.tasks.load_task``); the client trains on its partition of the train split.
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
                values[owner][spec.name] = _from_wire(record[key], spec)
            elif spec.name not in _OPTIONAL:
                raise ValueError(f"train config lacks '{key}'; is the server running the same scaleot?")
        return cls(
            **values[""], adapter=AdapterConfig(**values["adapter"]), train=TrainConfig(**values["train"])
        )


# Keys a train record may lack: Flower adds the first two, the rest have a meaning when absent.
_FLOWER_INJECTED = ("server_round", "proximal_mu")
_TEST_HOOKS = ("fail_partitions", "crash_partitions", "slow_partitions", "slow_seconds")
_OPTIONAL = (*_FLOWER_INJECTED, "emulator_sha256", "num_threads", *_TEST_HOOKS)


def wire_key(owner: str, name: str) -> str:
    """The record key of a field: its name with ``-`` (Flower's style); ``adapter.mode`` is ``adapter-mode``
    (``mode`` alone would not say of what), every other nested field keeps its own name."""
    return ("adapter-mode" if (owner, name) == ("adapter", "mode") else name).replace("_", "-")


def _wire_fields() -> list[tuple[str, Field]]:
    """(owner, field) of each wire value: ClientSettings' own, then AdapterConfig's and TrainConfig's."""
    own = [("", f) for f in fields(ClientSettings) if f.name not in ("adapter", "train")]
    return own + [("adapter", f) for f in fields(AdapterConfig)] + [("train", f) for f in fields(TrainConfig)]


def _to_wire(value: Any, spec: Field) -> Any:
    # ConfigRecord keeps one type per key: floats stay floats even when written as 1, tuples become lists.
    return list(value) if isinstance(value, tuple) else _cast(value, spec)


def _from_wire(value: Any, spec: Field) -> Any:
    return tuple(int(v) for v in value) if spec.name.endswith("_partitions") else _cast(value, spec)


def _cast(value: Any, spec: Field) -> Any:
    kind = {"float": float, "int": int, "str": str}.get(str(spec.type).split("[")[0])
    return kind(value) if kind else value


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
        missing = [k for k in (keys.NODE_PARTITION_ID, keys.NODE_NUM_PARTITIONS) if k not in node_config]
        if missing:
            raise ValueError(
                f"node config lacks {', '.join(missing)}; start the SuperNode with "
                '--node-config "partition-id=0 num-partitions=2 emulator-path=/path/to/bundle"'
            )
        return cls(
            partition_id=int(node_config[keys.NODE_PARTITION_ID]),
            num_partitions=int(node_config[keys.NODE_NUM_PARTITIONS]),
            emulator_path=str(node_config.get(keys.NODE_EMULATOR_PATH, "")),
            num_threads=int(node_config.get(keys.NODE_NUM_THREADS, 0)),
        )

    def bundle(self, sent_path: str) -> str:
        """The emulator bundle this node uses: its own, else the one the server named."""
        return self.emulator_path or sent_path
