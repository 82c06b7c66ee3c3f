"""The model owner's side of a run, behind the ServerApp: emulator bundle, zero-shot rows, rounds, outputs.

The same function runs under ``run_simulation`` (``scaleot simulate``), ``flwr run`` and a deployment; only
the ``Grid`` differs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid  # Flower's simulation runtime's grid

from clients.runtime import bundle_sha256
from clients.settings import ClientSettings
from emulator.bundle import load_emulator
from emulator.models import load_model
from emulator.tasks import load_task
from simulations.config import RunConfig
from simulations.emulator_cache import ensure_bundle
from simulations.export import export_run
from simulations.outputs import (
    RunState,
    load_checkpoint,
    plot_accuracy,
    save_checkpoint,
    write_metrics,
    write_report,
    write_tensors,
    write_text,
)
from simulations.server_eval import ServerEvaluator, initial_adapter
from strategies.offsite import OffsiteTuning, offsite_strategy
from strategies.records import RoundRecord

log = logging.getLogger(__name__)


def run_federation(grid: Grid, config: RunConfig, run_dir: Path, resume: Path | None = None) -> RunState:
    """Run (or continue) the federation described by ``config``, writing everything into ``run_dir``.

    Args:
        grid: Flower's grid of connected SuperNodes.
        config: the validated run config.
        run_dir: output directory (created if needed).
        resume: a run directory whose newest checkpoint to continue from (usually ``run_dir`` itself).

    Returns:
        The final run state (zero-shot rows, per-round records, bundle).
    """
    check_simulated_federation(grid, config.federation.num_clients)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.toml", config.to_toml())
    write_text(run_dir / "config.json", config.to_json())
    checkpoint = load_checkpoint(resume) if resume is not None else None
    device = "cuda" if torch.cuda.is_available() else "cpu"

    # Model owner: the full model, the emulator bundle the clients load, the test set.
    full_model, tokenizer = load_model(config.model, device=device)
    bundle = ensure_bundle(config.model, config.emulator, full_model, tokenizer)
    sha256 = bundle_sha256(str(bundle))
    emulator, _ = load_emulator(bundle, device=device)
    positions = emulator.adapter_positions()
    test = load_task(config.task, seed=config.seed).test
    test = test[: config.evaluation.test_limit] if config.evaluation.test_limit else test
    evaluation = config.evaluation
    evaluator = ServerEvaluator(
        full_model,
        emulator.model,
        positions,
        tokenizer,
        test,
        config.adapter,
        evaluation.batch_size,
        emulator_is_full=config.emulator.method == "full",
    )
    adapter = initial_adapter(emulator.model, positions, config.adapter, config.seed)

    if checkpoint is None:
        state = RunState(zero_shot=evaluator.zero_shot(), per_example=dict(evaluator.per_example))
        arrays = ArrayRecord(adapter)
    else:
        state = checkpoint.state
        arrays = ArrayRecord({k: Array(v) for k, v in checkpoint.adapter.items()})
        if state.bundle.get("sha256") not in (None, sha256):
            log.warning("the emulator bundle differs from the one the checkpoint was trained with")
        log.info("resuming %s after round %d", resume, len(state.history))
    state.bundle = {"path": str(bundle), "sha256": sha256}

    strategy = _strategy(config, str(bundle), sha256, evaluator, run_dir, state)
    if checkpoint is not None:
        strategy.restore_(state.history, checkpoint.strategy)
    remaining = config.federation.rounds - len(state.history)
    if remaining > 0:
        settings = _client_settings(config, str(bundle), sha256)
        result = strategy.start(grid, arrays, num_rounds=remaining, train_config=settings.to_record())
        arrays = result.arrays if len(result.arrays) else arrays
    _finish(run_dir, config, state, arrays)
    return state


def check_simulated_federation(grid: Grid, num_clients: int, poll_s: float = 1.0, polls: int = 120) -> None:
    """Fail at once when a simulated federation has fewer SuperNodes than ``federation.num_clients``.

    In Flower's simulation runtime (an ``InMemoryGrid``, under ``flwr run`` and ``run_simulation``) all
    SuperNodes register together right after the ServerApp starts and no other node can join, so the
    strategy's wait for ``num_clients`` nodes would never end. In a deployment nodes join over time and this
    check does nothing: the strategy waits for them, logging the count every 30 s.

    Raises:
        ValueError: the simulated federation has fewer SuperNodes than ``num_clients``.
    """
    if not isinstance(grid, InMemoryGrid):
        return
    seen, count = -1, 0
    for _ in range(polls):  # until all have registered (the count stops changing) or none ever do
        count = len(list(grid.get_node_ids()))
        if count >= num_clients or 0 < count == seen:
            break
        seen = count
        time.sleep(poll_s)
    if 0 < count < num_clients:
        raise ValueError(
            f"config federation.num_clients={num_clients} but the simulated federation has {count} "
            f'SuperNodes; run `flwr run` with --federation-config "num-supernodes={num_clients}" '
            f"or set federation.num_clients={count}"
        )


def _strategy(
    config: RunConfig, bundle: str, sha256: str, evaluator: ServerEvaluator, run_dir: Path, state: RunState
) -> OffsiteTuning:
    fed = config.federation

    def on_round_end(record: RoundRecord, arrays: ArrayRecord) -> None:
        state.history = list(strategy.history)
        state.per_example |= evaluator.per_example
        save_checkpoint(run_dir, _numpy(arrays), strategy.state_arrays(), state)
        write_metrics(run_dir, state, config.to_dict(), finished=False)

    strategy = offsite_strategy(
        fed.strategy,
        emulator_path=bundle,
        emulator_sha256=sha256,
        seed=config.seed,
        fraction_train=fed.fraction,
        min_train_nodes=fed.min_clients,
        min_available_nodes=fed.num_clients,
        evaluate_fn=evaluator,
        emulator_eval_every=config.evaluation.emulator_every,
        plugin_eval_every=config.evaluation.plugin_every,
        on_round_end=on_round_end,
        **fed.strategy_kwargs,
    )
    return strategy


def _client_settings(config: RunConfig, bundle: str, sha256: str) -> ClientSettings:
    cpus = config.simulation.client_num_cpus
    return ClientSettings(
        emulator_path=bundle,
        emulator_sha256=sha256,
        task=config.task,
        partition_scheme=config.federation.partition,
        dirichlet_alpha=config.federation.dirichlet_alpha,
        adapter=config.adapter,
        train=config.client,
        seed=config.seed,
        # The client's CPU share; 0 ("all cores") leaves torch's default, which is all cores.
        num_threads=max(1, int(cpus)) if cpus > 0 else 0,
        fail_partitions=config.federation.fail_partitions,
    )


def _finish(run_dir: Path, config: RunConfig, state: RunState, arrays: ArrayRecord) -> None:
    write_tensors(run_dir / "adapter.safetensors", _numpy(arrays))
    export_run(run_dir)  # plug-in/ and peft-adapter/, before metrics.json says the run is finished
    write_metrics(run_dir, state, config.to_dict(), finished=True)
    plot_accuracy(run_dir, state)
    write_report(
        run_dir, state, title=f"{config.name}: {config.emulator.method} on {config.model}, {config.task}"
    )
    rows = state.rows()
    summary = ", ".join(
        f"{name} {100 * row['acc']:.1f} ± {100 * row['acc_stderr']:.1f}" for name, row in rows.items()
    )
    log.info("done: %s → %s", summary, run_dir)


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in arrays.items()}
