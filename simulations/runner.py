"""``scaleot simulate``: a run on Flower's simulation runtime with the Ray backend.

``flwr.simulation.run_simulation`` is deprecated in Flower 1.42 but is the one entry point that runs
in-process and takes any ``ray.init`` argument; it is wrapped here alone, so swapping it touches one function.
``context.run_config`` is empty under it, so the ServerApp is built around the parsed config
(``server_app_for``); the ClientApp needs no run config (the server sends its settings with each message).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch, transformers and flwr load lazily, so `scaleot --help` stays fast
    from simulations.config import RunConfig, SimulationConfig

log = logging.getLogger(__name__)

# Quiet, offline-friendly defaults; what the user set wins. HF_HUB_OFFLINE stays the user's choice.
_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_LOG_LEVEL": "WARNING",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Idle OpenMP threads sleep instead of spinning: on a busy or shared CPU, spinning made 2-thread torch
    # steps ~50x slower than 1-thread ones (measured on the 2-core box); idle machines barely notice.
    "OMP_WAIT_POLICY": "PASSIVE",
    # Ray starts its workers, hence the ClientApp actors that do all the training, at niceness 15: on a busy
    # machine they then got ~4 % of a core and rounds ran ~10x slower (measured). Ray's own jobs use 0.
    "RAY_worker_niceness": "0",
}
# Config keys a resumed run may change: more rounds, other evaluation or backend settings.
_RESUMABLE = ("federation.rounds", "evaluation.", "simulation.", "output.")


def simulate(config: RunConfig, run_dir: Path, resume: Path | None = None) -> dict[str, Any]:
    """Run ``config`` on Ray with one simulated SuperNode per client; return the final metrics.json content.

    Args:
        config: the validated run config.
        run_dir: where outputs go (created if needed).
        resume: a run directory whose newest checkpoint to continue (usually ``run_dir``).

    Raises:
        RuntimeError: the run ended without finishing (the ServerApp's own exceptions propagate as they are).
    """
    quiet_environment()
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from simulations.server_app import server_app_for

    run_dir.mkdir(parents=True, exist_ok=True)
    backend = backend_config(config.simulation)
    log.info(
        "simulating %d clients × %d rounds (%s) into %s; Ray: %s",
        config.federation.num_clients,
        config.federation.rounds,
        config.federation.strategy,
        run_dir,
        backend,
    )
    run_simulation(
        server_app=server_app_for(config, run_dir, resume),
        client_app=client_app,
        num_supernodes=config.federation.num_clients,
        backend_name="ray",
        backend_config=backend,
        verbose_logging=False,
    )
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if metrics.get("status") != "finished":
        raise RuntimeError(f"the simulation stopped before finishing; see {run_dir} and the log above")
    return metrics


def backend_config(sim: SimulationConfig) -> dict[str, Any]:
    """Flower's Ray ``backend_config``: client resources and ``ray.init`` arguments.

    Default: one ClientApp actor holding all cores (on a 2-core machine two actors would oversubscribe the CPU
    and hold two emulator copies), one GPU per actor when CUDA is present.
    """
    import torch

    cores = os.cpu_count() or 1
    gpus = sim.client_num_gpus if sim.client_num_gpus >= 0 else (1.0 if torch.cuda.is_available() else 0.0)
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "WARNING",
        "log_to_driver": True,
    }
    if sim.ray_address:
        init_args["address"] = sim.ray_address  # an existing cluster brings its own resources
    else:
        init_args["num_cpus"] = cores
        if gpus > 0:
            init_args["num_gpus"] = torch.cuda.device_count()
    init_args.update(sim.ray_init_args)
    return {
        "client_resources": {"num_cpus": sim.client_num_cpus or cores, "num_gpus": gpus},
        "init_args": init_args,
    }


def quiet_environment() -> None:
    """Silence Flower's INFO logs, telemetry and Ray's warnings (the run logs one line per round itself)."""
    for key, value in _ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    logging.getLogger("flwr").setLevel(os.environ["FLWR_LOG_LEVEL"])
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's link-state database migrations
    logging.getLogger("flwr").addFilter(_drop_run_simulation_deprecation)


def _drop_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    # Users of `scaleot simulate` did not call run_simulation themselves; its deprecation notice is noise.
    return "run_simulation" not in record.getMessage()


# --- `scaleot simulate` ------------------------------------------------------------------------------------


def simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``scaleot simulate``."""
    parser.add_argument("--config", help="run config TOML, e.g. simulations/configs/tiny.toml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set federation.rounds=3 (repeatable)",
    )
    parser.add_argument(
        "--resume", type=Path, help="continue the run in this directory from its last checkpoint"
    )
    parser.add_argument("--out", type=Path, help="run directory (default: <output.dir>/<name>-<timestamp>)")
    parser.add_argument(
        "--bundle-only",
        action="store_true",
        help="only build (or find) the run's emulator bundle and print its directory, e.g. to "
        "copy it to the data owners of a deployment",
    )


def run_simulate(args: argparse.Namespace) -> None:
    """``scaleot simulate``: parse and validate the config, then run it on Ray."""
    quiet_environment()  # before torch is imported: OpenMP reads its settings once
    from simulations.config import load_config
    from simulations.server_app import new_run_dir

    if args.resume is not None:
        config = resume_config(args.resume, args.overrides)
        run_dir = args.out or args.resume
    elif args.config:
        config = load_config(args.config, args.overrides)
        run_dir = args.out or new_run_dir(config)
    else:
        raise ValueError("give --config FILE (a new run) or --resume DIR (continue one)")
    if args.bundle_only:
        print(prepare_bundle(config))
        return
    metrics = simulate(config, Path(run_dir), resume=args.resume)
    for name, row in metrics["results"].items():
        log.info("%-12s %5.1f ± %.1f %%", name, 100 * row["acc"], 100 * row["acc_stderr"])


def prepare_bundle(config: RunConfig) -> Path:
    """Build or reuse the emulator bundle ``config`` would distribute; the ServerApp finds the same one."""
    from emulator.models import load_model
    from simulations.bundles import ensure_bundle

    model, tokenizer = load_model(config.model)
    return ensure_bundle(config.model, config.emulator, model, tokenizer)


def resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The config a run directory was started with, plus overrides of the keys that may change on resume.

    Raises:
        ValueError: no config in ``run_dir``, or an override of a key that would change what was trained.
    """
    frozen = [o for o in overrides if not o.split("=", 1)[0].strip().startswith(_RESUMABLE)]
    if frozen:
        raise ValueError(
            f"on --resume only {', '.join(p + '*' for p in _RESUMABLE)} may change; not {', '.join(frozen)}"
        )
    from simulations.config import load_config

    path = run_dir / "config.toml"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.toml)")
    return load_config(path, overrides)
