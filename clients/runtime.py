"""A client's working set: the emulator (loaded once per process) and its partition of the task.

Ray actors are long-lived and serve many nodes and rounds, so the emulator is cached at module level, keyed by
bundle path and manifest hash; only the adapter is reset from the global adapter each round, and the
harmonizers from the message's re-aligned ones (``federation.realign_steps``) or, without them, the bundle's
own, so a re-aligned emulator never leaks into a later message or run. In a deployment with subprocess
isolation every message is a fresh process and the cache simply misses. The client only ever reads the
emulator bundle: it never holds the full model's middle layers.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from clients.partition import partition
from emulator.config import AdapterConfig
from emulator.data.encoding import training_batches
from emulator.data.tasks import MCExample, TaskSplits, load_task
from emulator.scaleot.blocks import LayerEntry
from emulator.scaleot.bundle import load_emulator, read_manifest
from emulator.scaleot.realign import HarmonizerState, harmonizer_state, load_harmonizer_state_
from emulator.tuning.adapters import AdapterState, load_adapter_state_, prepare_adapter_
from emulator.tuning.training import TrainResult, client_seed, train_adapter
from strategies.wire import ClientSettings, NodeSettings

log = logging.getLogger(__name__)


@dataclass
class LoadedEmulator:
    """An emulator bundle in memory, with its adapter prepared for ``adapter`` (None: not yet).

    ``own_harmonizers`` are the bundle's harmonizer tensors (a copy, small), put back whenever a message
    carries no re-aligned ones; ``realigned`` says the model holds another message's.
    """

    path: str
    sha256: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    positions: dict[int, int]
    layer_map: list[LayerEntry] = field(default_factory=list)
    own_harmonizers: HarmonizerState = field(default_factory=dict)
    adapter: AdapterConfig | None = None
    realigned: bool = False


_EMULATOR: LoadedEmulator | None = None
_LOADS = 0
_TASKS: dict[tuple[str, int], TaskSplits] = {}


def emulator_loads() -> int:
    """How many times this process has read an emulator bundle from disk (the cache's misses)."""
    return _LOADS


def worker_id() -> str:
    """Where this client runs: the Ray node id in a Ray simulation (one per cluster node), else the host."""
    ray = sys.modules.get("ray")  # imported only where Flower's Ray backend runs this client
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return socket.gethostname()


def bundle_sha256(path: str) -> str:
    """The hash recorded in a bundle's manifest.

    Raises:
        ValueError: ``path`` holds no emulator bundle.
    """
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        raise ValueError(
            f"no emulator bundle at {path!r} (missing manifest.json); give the SuperNode "
            "--node-config \"emulator-path='/path/to/bundle'\" or let the server write one"
        )
    return str(read_manifest(path)["sha256"])


def cached_emulator(path: str, expected_sha256: str = "") -> LoadedEmulator:
    """The emulator at ``path``, from this process's cache when the same bundle was loaded before.

    Raises:
        ValueError: no bundle at ``path``, or its hash differs from ``expected_sha256`` (when given).
    """
    global _EMULATOR, _LOADS
    sha256 = bundle_sha256(path)
    if expected_sha256 and sha256 != expected_sha256:
        raise ValueError(
            f"the emulator at {path!r} has sha256 {sha256[:12]}…, the server's is {expected_sha256[:12]}…"
        )
    resolved = str(Path(path).resolve())
    if _EMULATOR is None or (_EMULATOR.path, _EMULATOR.sha256) != (resolved, sha256):
        _EMULATOR = None  # free the old one before loading the next
        device = "cuda" if torch.cuda.is_available() else "cpu"
        emulator, tokenizer = load_emulator(path, device=device)
        _LOADS += 1
        own = harmonizer_state(emulator.model, emulator.layer_map)
        positions = emulator.adapter_positions()
        _EMULATOR = LoadedEmulator(
            resolved, sha256, emulator.model, tokenizer, positions, emulator.layer_map, own
        )
        log.info("loaded the emulator %s (%s…) on %s", path, sha256[:12], device)
    return _EMULATOR


def with_adapter(loaded: LoadedEmulator, config: AdapterConfig) -> LoadedEmulator:
    """``loaded`` with its adapter prepared for ``config`` (reloaded first if prepared for another one)."""
    global _EMULATOR
    if loaded.adapter is not None and loaded.adapter != config:
        _EMULATOR = None
        loaded = cached_emulator(loaded.path, loaded.sha256)
    if loaded.adapter is None:
        prepare_adapter_(loaded.model, loaded.positions, config)
        loaded.adapter = config
    return loaded


def with_harmonizers_(loaded: LoadedEmulator, harmonizers: Mapping[str, torch.Tensor] | None) -> None:
    """Put the server's re-aligned ``harmonizers`` into ``loaded``'s emulator, or (None) the bundle's own
    back if another message's are in it.

    Raises:
        ValueError: the keys or shapes of ``harmonizers`` differ from the emulator's harmonizers (the bundle's
            own are put back first, so a refused message leaves the emulator as shipped).
    """
    if loaded.realigned:
        load_harmonizer_state_(loaded.model, loaded.layer_map, loaded.own_harmonizers)
        loaded.realigned = False
    if harmonizers is not None:
        load_harmonizer_state_(loaded.model, loaded.layer_map, harmonizers)
        loaded.realigned = True


def client_examples(settings: ClientSettings, node: NodeSettings) -> list[MCExample]:
    """This node's partition of the task's train split (the task is read once per process)."""
    key = (settings.task, settings.seed)
    if key not in _TASKS:
        _TASKS.clear()
        _TASKS[key] = load_task(settings.task, seed=settings.seed)
    return partition(
        _TASKS[key].train,
        node.num_partitions,
        node.partition_id,
        scheme=settings.partition_scheme,
        dirichlet_alpha=settings.dirichlet_alpha,
        seed=settings.seed,
    )


def inject_faults(settings: ClientSettings, partition_id: int) -> None:
    """The test hooks of ``federation.*_partitions``: raise, kill this process, or be slow.

    Raises:
        RuntimeError: ``partition_id`` is in ``fail_partitions``.
    """
    if partition_id in settings.fail_partitions:
        raise RuntimeError(f"partition {partition_id} fails on purpose (federation.fail_partitions)")
    if partition_id in settings.crash_partitions:
        # The process dies as if killed: no exception, no reply, no cleanup (Ray reports the actor died).
        log.warning("partition %d: exiting the client process (federation.crash_partitions)", partition_id)
        os._exit(17)
    if partition_id in settings.slow_partitions:
        time.sleep(settings.slow_seconds)


def local_update(
    settings: ClientSettings,
    node: NodeSettings,
    global_adapter: AdapterState,
    harmonizers: Mapping[str, torch.Tensor] | None = None,
) -> tuple[TrainResult, int]:
    """One round of local training from the global adapter, on the emulator with the server's re-aligned
    ``harmonizers`` (None: the bundle's own); returns the result and the example count.

    Raises:
        RuntimeError: the node's partition is listed in ``fail_partitions`` (a test hook).
        ValueError: the bundle, the adapter or harmonizer keys, or the training settings do not fit.
    """
    inject_faults(settings, node.partition_id)
    threads = node.num_threads or settings.num_threads
    if threads > 0:
        torch.set_num_threads(threads)
    loaded = with_adapter(
        cached_emulator(node.bundle(settings.emulator_path), settings.emulator_sha256), settings.adapter
    )
    with_harmonizers_(loaded, harmonizers)
    load_adapter_state_(loaded.model, loaded.positions, global_adapter)
    examples = client_examples(settings, node)
    train = settings.train
    seed = client_seed(settings.seed, settings.server_round, node.partition_id)
    batches = training_batches(
        loaded.tokenizer,
        examples,
        batch_size=train.batch_size,
        max_length=train.max_length,
        seed=seed,
        epochs=None if train.local_steps else train.local_epochs,
        steps=train.local_steps or None,
    )
    result = train_adapter(
        loaded.model,
        loaded.positions,
        batches,
        lr=train.lr,
        max_grad_norm=train.max_grad_norm,
        weight_decay=train.weight_decay,
        proximal_mu=settings.proximal_mu,
        seed=seed,
        checkpoint_blocks=train.checkpoint_blocks,
        bf16=train.bf16,
    )
    return result, len(examples)
