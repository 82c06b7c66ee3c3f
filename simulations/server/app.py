"""The model owner's Flower ServerApp.

``app`` is the component ``flwr run`` loads (pyproject ``[tool.flwr.app.components]``): it reads the run
config (``config-file`` plus dotted overrides, optional ``run-dir``, ``resume`` and ``overwrite``: a
``run-dir`` holding a run is refused unless resumed or overwritten). ``server_app_for``
builds the same app around an already parsed config, for ``run_simulation`` (whose run config is empty).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from emulator.config_parse import parse_typed
from simulations.run_config import RUN_OVERWRITE, RunConfig, from_flower_run_config
from simulations.server.federation import run_federation
from simulations.server.outputs import prepare_run_dir

log = logging.getLogger(__name__)
app = ServerApp()
_ROOT = Path(__file__).resolve().parents[2]  # the app directory (the repository, or the unpacked FAB)
_PACKAGES = ("simulations", "strategies", "clients", "emulator")
_FLWR_OPTIONS = '--run-config "resume=true" to continue its run, or "overwrite=true" to replace it'


@app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run` entry point: parse the run config once, then run the federation."""
    _ensure_logging()
    config, directory, resume = run_dir_of(context.run_config)
    log.info("ServerApp from %s, run directory %s", _ROOT, directory)
    _warn_backend_keys(config)
    run_federation(grid, config, directory, resume=directory if resume else None)


def run_dir_of(run_config: Mapping[str, Any]) -> tuple[RunConfig, Path, bool]:
    """The parsed run config, the run directory (made ready for one run) and the resume flag.

    Raises:
        ValueError: the run config is invalid, ``overwrite`` goes with ``resume``, or ``run-dir`` already
            holds files of a run and neither ``resume`` nor ``overwrite`` is set.
    """
    overwrite = parse_typed(run_config.get(RUN_OVERWRITE, False), bool, f"run config {RUN_OVERWRITE}")
    config, run_dir, resume = from_flower_run_config(run_config, _ROOT)
    if overwrite and resume:
        raise ValueError("run config overwrite=true starts a new run over an old one; not with resume=true")
    directory = Path(run_dir) if run_dir else new_run_dir(config)
    prepare_run_dir(directory, directory if resume else None, overwrite, options=_FLWR_OPTIONS)
    return config, directory, resume


def _warn_backend_keys(config: RunConfig) -> None:
    # Under `flwr run` Flower's --federation-config (or the SuperLink's federation) sizes the Ray backend.
    sim = config.simulation
    ignored = ["backend"] if sim.backend != "ray" else []
    ignored += [k for k, on in (("ray_address", sim.ray_address), ("ray_init_args", sim.ray_init_args)) if on]
    ignored += ["client_num_gpus"] if sim.client_num_gpus >= 0 else []
    if ignored:
        log.warning(
            "simulation.%s apply to `scaleot simulate` only; under `flwr run` use --federation-config "
            "(client-resources-num-cpus, client-resources-num-gpus, init-args-num-cpus, ...)",
            ", simulation.".join(ignored),
        )


def server_app_for(
    config: RunConfig, run_dir: Path, resume: Path | None = None, check: Callable[[], None] | None = None
) -> ServerApp:
    """A ServerApp that runs ``config`` into ``run_dir`` (continuing ``resume``'s checkpoint if given);
    ``check`` raises when the run must stop (see ``run_federation``)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, run_dir, resume=resume, check=check)

    return server_app


def new_run_dir(config: RunConfig) -> Path:
    """A fresh ``<output.dir>/<name>-<timestamp>`` directory path (absolute)."""
    base = Path(config.output.dir).resolve() / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def _ensure_logging() -> None:
    # Under `flwr run` the ServerApp is a fresh process whose root logger has no handler. Give this project's
    # loggers one (the per-round progress lines), without turning on INFO for Flower's and httpx's loggers.
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for name in _PACKAGES:
        logger = logging.getLogger(name)
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(formatter)
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
