"""What a client is told: the server's train config and its own node config, parsed once into dataclasses.

The server builds the train ``ConfigRecord`` with ``ClientSettings.to_record`` and the ClientApp parses it
back with ``ClientSettings.from_record``: one definition of the wire format (keys in ``strategies.keys``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord

from clients.training import TrainConfig
from emulator.adapters import AdapterConfig
from strategies import keys


@dataclass(frozen=True)
class ClientSettings:
    """Everything the server sends with a train message besides the adapter.

    Attributes:
        emulator_path: the bundle the server wrote (used when the node config names none).
        emulator_sha256: manifest hash of that bundle; a client holding another emulator refuses to train.
        task: task name (``emulator.tasks.load_task``); the client trains on its partition of the train split.
        partition_scheme: ``iid`` or ``dirichlet`` (label skew).
        dirichlet_alpha: concentration of the Dirichlet split (smaller: more skewed).
        adapter: full adapter blocks or LoRA on them.
        train: the local training hyper-parameters.
        seed: run seed (task split, partitioning, per-round client seeds).
        num_threads: torch threads for the client (its CPU share); 0 leaves torch's default.
        fail_partitions: test hook: these partitions raise instead of training.
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
    server_round: int = 0
    proximal_mu: float = 0.0

    def to_record(self) -> ConfigRecord:
        """The train ConfigRecord (``server-round`` and ``proximal-mu`` are added by Flower's strategies)."""
        record: dict[str, Any] = {
            keys.EMULATOR_PATH: self.emulator_path,
            keys.EMULATOR_SHA256: self.emulator_sha256,
            keys.TASK: self.task,
            keys.PARTITION_SCHEME: self.partition_scheme,
            keys.DIRICHLET_ALPHA: float(self.dirichlet_alpha),
            keys.ADAPTER_MODE: self.adapter.mode,
            keys.LORA_RANK: self.adapter.lora_rank,
            keys.LORA_ALPHA: self.adapter.lora_alpha,
            keys.LORA_DROPOUT: float(self.adapter.lora_dropout),
            keys.LR: float(self.train.lr),
            keys.BATCH_SIZE: self.train.batch_size,
            keys.LOCAL_EPOCHS: float(self.train.local_epochs),
            keys.LOCAL_STEPS: self.train.local_steps,
            keys.MAX_LENGTH: self.train.max_length,
            keys.MAX_GRAD_NORM: float(self.train.max_grad_norm),
            keys.WEIGHT_DECAY: float(self.train.weight_decay),
            keys.CHECKPOINT_MIDDLE: self.train.checkpoint_middle,
            keys.BF16: self.train.bf16,
            keys.SEED: self.seed,
            keys.NUM_THREADS: self.num_threads,
        }
        if self.fail_partitions:
            record[keys.FAIL_PARTITIONS] = list(self.fail_partitions)
        return ConfigRecord(record)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClientSettings:
        """Parse a train ConfigRecord.

        Raises:
            ValueError: a required key is missing (the message names it) or a value is out of range.
        """
        try:
            return cls(
                emulator_path=str(record[keys.EMULATOR_PATH]),
                emulator_sha256=str(record.get(keys.EMULATOR_SHA256, "")),
                task=str(record[keys.TASK]),
                partition_scheme=str(record[keys.PARTITION_SCHEME]),
                dirichlet_alpha=float(record[keys.DIRICHLET_ALPHA]),
                adapter=AdapterConfig(
                    mode=record[keys.ADAPTER_MODE],
                    lora_rank=int(record[keys.LORA_RANK]),
                    lora_alpha=int(record[keys.LORA_ALPHA]),
                    lora_dropout=float(record[keys.LORA_DROPOUT]),
                ),
                train=TrainConfig(
                    lr=float(record[keys.LR]),
                    batch_size=int(record[keys.BATCH_SIZE]),
                    local_epochs=float(record[keys.LOCAL_EPOCHS]),
                    local_steps=int(record[keys.LOCAL_STEPS]),
                    max_length=int(record[keys.MAX_LENGTH]),
                    max_grad_norm=float(record[keys.MAX_GRAD_NORM]),
                    weight_decay=float(record[keys.WEIGHT_DECAY]),
                    checkpoint_middle=bool(record.get(keys.CHECKPOINT_MIDDLE, False)),
                    bf16=bool(record.get(keys.BF16, False)),
                ),
                seed=int(record[keys.SEED]),
                num_threads=int(record.get(keys.NUM_THREADS, 0)),
                fail_partitions=tuple(int(p) for p in record.get(keys.FAIL_PARTITIONS, [])),
                server_round=int(record.get(keys.SERVER_ROUND, 0)),
                proximal_mu=float(record.get(keys.PROXIMAL_MU, 0.0)),
            )
        except KeyError as missing:
            raise ValueError(
                f"train config lacks {missing}; is the server running the same scaleot?"
            ) from None


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
