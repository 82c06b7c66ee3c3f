"""The model owner's side of a run, behind the ServerApp: emulator bundle, zero-shot rows, rounds, outputs.

The same function runs under ``run_simulation`` (``scaleot simulate``), ``flwr run`` and a deployment; only
the ``Grid`` differs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid

from clients.runtime import bundle_sha256
from clients.settings import ClientSettings
from emulator.bundle import load_emulator
from emulator.models import load_model
from emulator.tasks import load_task
from simulations.bundles import ensure_bundle
from simulations.config import RunConfig
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
from strategies import keys
from strategies.offsite import OffsiteTuning, offsite_strategy
from strategies.privacy import DifferentialPrivacy
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
        reference_key=(config.model, config.task, config.seed, evaluation.test_limit, evaluation.batch_size),
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
        **_privacy_kwargs(config),
        **fed.strategy_kwargs,
    )
    return strategy


def _privacy_kwargs(config: RunConfig) -> dict[str, Any]:
    if not config.privacy.enabled:
        return {}
    fed = config.federation
    sampled = min(max(int(fed.num_clients * fed.fraction), fed.min_clients), fed.num_clients)
    # Uniform average (DP's sensitivity C / m): every client runs client.local_steps steps, weighted by them.
    return {
        "privacy": DifferentialPrivacy(config.privacy, sampled, fed.num_clients),
        "weighted_by_key": keys.TRAIN_STEPS,
    }


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
