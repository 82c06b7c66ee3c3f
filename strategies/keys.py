"""Message keys shared by the offsite-tuning strategy and the ClientApp: the wire contract, in one place.

Record keys name the records inside a ``RecordDict``; config and metric keys name the entries inside them.
Flower's own conventions are kept where they exist (``arrays``, ``config``, ``server-round``,
``num-examples``, ``proximal-mu``).
"""

from __future__ import annotations

# --- message types -------------------------------------------------------------------------------------
# First contact: the client loads (and verifies) the emulator and says which partition it holds.
QUERY_EMULATOR = "emulator"
QUERY_EMULATOR_TYPE = f"query.{QUERY_EMULATOR}"

# --- records inside a RecordDict -----------------------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the adapter, fp32, keyed "{original block index}.{name in block}"
CONFIG = "config"  # ConfigRecord: server -> client settings
METRICS = "metrics"  # MetricRecord: client -> server numbers
INFO = "info"  # ConfigRecord: client -> server facts from the emulator handshake

# --- config keys (server -> client) --------------------------------------------------------------------
# The training settings' keys are derived from ClientSettings' fields (clients.settings.wire_key); these are
# the ones the handshake and Flower use on their own.
SERVER_ROUND = "server-round"  # injected by Flower's FedAvg
PROXIMAL_MU = "proximal-mu"  # injected by Flower's FedProx; the client adds (mu/2)·||w - w_global||²
EMULATOR_PATH = "emulator-path"  # bundle directory the server wrote (simulation); node config wins
EMULATOR_SHA256 = "emulator-sha256"  # manifest hash the client's bundle must have

# --- node config keys (set by the simulation or by `flower-supernode --node-config`) -------------------
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_EMULATOR_PATH = "emulator-path"
NODE_NUM_THREADS = "num-threads"

# --- metric / info keys (client -> server) -------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # FedAvg's weight
TRAIN_LOSS = "train_loss"
TRAIN_STEPS = "train_steps"
TRAIN_SECONDS = "train_seconds"
STEP_SECONDS = "step_seconds"  # train_seconds / train_steps
PEAK_MEMORY = "peak_memory_bytes"  # peak memory during local training (emulator.memory: CUDA tensors or RSS)
INFO_PARTITION_ID = "partition-id"
INFO_EMULATOR_SHA256 = "emulator-sha256"
INFO_WORKER = "worker"  # train reply: where the client ran (Ray node id in a simulation, else host name)

# --- server-side evaluation results (evaluate_fn -> strategy): "{prefix}_{measure}" ----------------------
PLUGIN = "plugin"  # full model + global adapter
EMULATOR = "emulator"  # emulator + global adapter (emulator fine-tuned)
MEASURES = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
PLUGIN_ACC = "plugin_acc"
PLUGIN_ACC_STDERR = "plugin_acc_stderr"
EMULATOR_ACC = "emulator_acc"
EMULATOR_ACC_STDERR = "emulator_acc_stderr"
EVAL_N = "eval_n"  # number of test examples scored
