"""``scaleot simulate``: a run on Flower's simulation runtime with the Ray backend, or in this process.

It calls ``flwr.simulation.run_simulation``, deprecated in Flower 1.42 (flwr is pinned below 1.43), because it
runs in-process and takes any ``ray.init`` argument and fractional CPUs per client; ``flwr run .`` runs the
same apps but passes only a few backend settings (docs/deployment.md, "Two ways to run a simulation"). It is
wrapped here alone, so swapping it touches one function. ``context.run_config`` is empty under it, so the
ServerApp is built around the parsed config (``server_app_for``); the ClientApp needs no run config (the
server sends its settings with each message). ``simulation.backend = "inprocess"`` runs the same apps with
every client in this process instead (``simulations.inprocess``): no Ray, for tests and debugging.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emulator.files import one_line
from simulations.run_config import (
    INPROCESS,
    RunConfig,
    SimulationConfig,
    add_set_option,
    check_resumable,
    load_config,
    resume_config,
)
from strategies.records import RunFailedError, RunStopped

log = logging.getLogger(__name__)

RAY_CONNECT_TIMEOUT_S = 10.0  # how long simulation.ray_address gets to accept a connection

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


def simulate(
    config: RunConfig,
    run_dir: Path,
    resume: Path | None = None,
    overwrite: bool = False,
    origin: str = "",
) -> dict[str, Any]:
    """Run ``config`` with one simulated SuperNode per client; return the final metrics.json content.

    The backend is ``simulation.backend``: Flower's simulation engine on Ray, or every client in this process
    (``simulations.inprocess``). Before anything heavy: ``run_dir`` must be empty (or ``resume`` itself, or
    ``overwrite`` set), and a cluster at ``simulation.ray_address`` must answer. Ray is started here, before
    Flower's engine, so that a backend that cannot start ends the run before any model loads, and SIGTERM /
    SIGINT stop the run at any stage (``RunInterrupted``); every file is written atomically, so the directory
    stays resumable.

    Args:
        config: the validated run config.
        run_dir: where outputs go (created if needed).
        resume: a run directory whose newest checkpoint to continue (usually ``run_dir``).
        overwrite: a new run may replace the run files already in ``run_dir``.
        origin: the option ``run_dir`` came from (``--out=PATH``), named if it cannot be a directory.

    Raises:
        ValueError: the public corpus holds the run's task (checked before anything is written), or
            ``run_dir`` already holds files (see ``outputs.prepare_run_dir``), is a file or cannot be
            created.
        RunFailedError: nothing was trained, nodes were missing, the Ray cluster did not answer or the Ray
            backend failed (the reason says which); metrics.json then has ``status`` ``failed`` or is not
            finished.
        RunInterrupted: SIGTERM or SIGINT arrived.
        RuntimeError: the run ended without finishing (the ServerApp's own exceptions propagate as they are).
    """
    quiet_environment()
    from simulations.server.outputs import (
        prepare_run_dir,  # torch: not at import (`scaleot --help` stays fast)
    )

    prepare_run_dir(run_dir, resume, overwrite)
    if config.simulation.ray_address:
        check_ray_address(config.simulation.ray_address)
    if config.emulator.traits.reads_corpus:
        from emulator.data.corpus import public_corpus

        # Seconds here, not after Ray has started and the model has loaded: a corpus that holds the task.
        data = config.emulator.data
        public_corpus("train", data.corpus, exclude=data.corpus_exclude)
    _make_run_dir(run_dir, origin)
    run = _run_inprocess if config.simulation.backend == INPROCESS else _run_ray
    try:
        run(config, run_dir, resume)
    except RunInterrupted as stop:
        raise RunInterrupted(
            stop.signum,
            f"stopped by {stop.name}; {run_dir} keeps every finished round: "
            f"`scaleot simulate --resume {run_dir}` continues the run",
        ) from None
    metrics = _status(run_dir)
    if metrics.get("status") == "failed":
        raise RunFailedError(metrics.get("reason", f"the run failed; see {run_dir}"))
    if metrics.get("status") != "finished":
        raise RuntimeError(f"the simulation stopped before finishing; see {run_dir} and the log above")
    return metrics


def _make_run_dir(run_dir: Path, origin: str) -> None:
    # A path that cannot be a run directory is bad input (exit 2, the option named), not a bare errno that
    # reads like a failed run.
    given = f"{origin}: " if origin else ""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{given}{run_dir} is a file; a run directory must be absent or an empty one")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"{given}the run directory {run_dir} cannot be created ({one_line(error)}); give a directory "
            "that can be written"
        ) from None


def _run_ray(config: RunConfig, run_dir: Path, resume: Path | None) -> None:
    """The run on Flower's simulation engine with the Ray backend (``simulate``'s default)."""
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from simulations.server.app import server_app_for

    watch = BackendWatch()
    backend = backend_config(config.simulation)
    _log_start(config, run_dir, f"Ray: {backend}")
    log.info(
        "running on flwr.simulation.run_simulation (deprecated in Flower 1.42; `flwr run .` is the "
        "supported path, see docs/deployment.md)"
    )
    try:
        start_ray(backend["init_args"], watch)
        with stop_on_signals(watch):
            run_simulation(
                server_app=server_app_for(config, run_dir, resume, check=watch.check),
                client_app=client_app,
                num_supernodes=config.federation.num_clients,
                backend_name="ray",
                backend_config=backend,
                verbose_logging=False,
            )
    except RunFailedError:
        raise
    except RuntimeError as error:
        # Flower raises a backend crash in this thread, wrapped in RuntimeErrors whose root names the cause,
        # while the ServerApp's own exceptions come as they are (and are not the backend's to report).
        if error.__cause__ is None:
            raise
        watch.fail(error)  # the ServerApp thread ends at its next step instead of waiting for clients
        raise RunFailedError(f"the simulation backend failed: {watch.reason}") from error
    finally:
        _stop_ray()


def _run_inprocess(config: RunConfig, run_dir: Path, resume: Path | None) -> None:
    """The run with every client in this process (``simulation.backend = "inprocess"``): the ServerApp runs
    in this thread, so a signal's ``RunInterrupted`` ends it where it is."""
    from clients.client_app import app as client_app
    from simulations.inprocess import run_inprocess
    from simulations.server.app import server_app_for

    watch = BackendWatch()
    _log_start(config, run_dir, "in this process, clients one after another")
    with stop_on_signals(watch):
        run_inprocess(
            server_app_for(config, run_dir, resume, check=watch.check),
            client_app,
            config.federation.num_clients,
        )


def _log_start(config: RunConfig, run_dir: Path, backend: str) -> None:
    log.info(
        "simulating %d clients × %d rounds (%s) into %s; %s",
        config.federation.num_clients,
        config.federation.rounds,
        config.federation.strategy,
        run_dir,
        backend,
    )


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT stopped a run. A ``BaseException``, like ``KeyboardInterrupt``: Flower's engine
    wraps every ``Exception`` into a logged ``RuntimeError``, and nothing should catch this as a failure."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(message or f"stopped by {self.name}")


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail at once when nothing answers at ``simulation.ray_address``: Ray itself retries "Failed to connect
    to GCS" for ever, ignoring SIGTERM while it does. ``auto`` is left to Ray (it fails at once without a
    local cluster).

    Raises:
        ValueError: the address is not ``auto``, ``host:port`` or ``ray://host:port``.
        RunFailedError: no TCP connection to it within ``timeout`` seconds.
    """
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"config simulation.ray_address={address!r} is invalid; it must be auto, host:port or "
            "ray://host:port"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise RunFailedError(
            f"no Ray cluster answers at simulation.ray_address={address!r} ({one_line(error)} within "
            f"{timeout:g} s); start it (`ray start --head --port={port}`) or correct the address"
        ) from None


def start_ray(init_args: dict[str, Any], watch: BackendWatch) -> None:
    """``ray.init`` with Flower's backend arguments, as Flower's ``RayBackend`` would call it (which then
    finds Ray running and uses it).

    Raises:
        RunFailedError: Ray did not start or connect (its reason in the message).
    """
    import ray

    if ray.is_initialized():
        return
    # As Flower's RayBackend does: workers import the apps with this driver's sys.path.
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = pythonpath
    try:
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
    except Exception as error:  # whatever Ray raises, it is the backend's reason, reported in one line
        watch.fail(error)
        raise RunFailedError(f"the simulation backend failed: {watch.reason}") from None


def _stop_ray() -> None:
    # Flower's backend shuts Ray down when its loop ends; this covers an end before the loop started.
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@contextmanager
def stop_on_signals(watch: BackendWatch) -> Iterator[None]:
    """SIGTERM and SIGINT raise ``RunInterrupted`` in the main thread (which then leaves Flower's engine,
    stopping Ray) and tell the ServerApp thread to stop at its next step. Installed after ``ray.init``,
    whose own SIGTERM handler it replaces; a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        watch.stop(f"stopped by {signal.Signals(signum).name}")
        # Flower logs a traceback for every actor Ray takes down on the way out (each twice: its own handler
        # and the root's); the user asked for the stop, the one line below says what it kept.
        logging.getLogger("flwr").setLevel(logging.CRITICAL + 1)
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class BackendWatch:
    """Tells the ServerApp thread that the run must stop (the simulation backend died, or a signal came),
    so it stops instead of waiting.

    ``run_simulation`` runs the ServerApp in a thread of its own and raises in the main thread when Ray fails
    (to start, or later); without this the ServerApp would go on loading, scoring and waiting for clients.
    """

    def __init__(self) -> None:
        self.reason = ""  # the backend's failure
        self.stopped = ""  # why the run was stopped from outside

    def fail(self, error: BaseException) -> None:
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        self.reason = " ".join(f"{type(root).__name__}: {root}".split())[:500]

    def stop(self, reason: str) -> None:
        self.stopped = reason

    def check(self) -> None:
        """Raise if the backend has failed or the run was stopped.

        Raises:
            RunFailedError: the simulation backend failed (its reason in the message).
            RunStopped: the run was stopped (a ``RunFailedError`` that is not recorded as the run's failure).
        """
        if self.reason:
            raise RunFailedError(f"the simulation backend failed: {self.reason}")
        if self.stopped:
            raise RunStopped(self.stopped)


def _status(run_dir: Path) -> dict[str, Any]:
    from simulations.server.outputs import read_metrics  # torch: not at import

    return read_metrics(run_dir)


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
        # max_restarts: Ray replaces an actor whose process died (its message gets an error reply), so one
        # crashed client does not take every later message down with it.
        "client_resources": {"num_cpus": sim.client_num_cpus or cores, "num_gpus": gpus, "max_restarts": -1},
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
    # Flower's multi-line notice tells the caller to change code they did not write; simulate() logs one line
    # saying the same instead.
    return "run_simulation" not in record.getMessage()


# --- `scaleot simulate` ------------------------------------------------------------------------------------


def simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``scaleot simulate``."""
    parser.add_argument("--config", help="run config TOML, e.g. simulations/configs/tiny.toml")
    add_set_option(parser)
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint. Without --out it goes on in DIR; with --out, "
        "DIR only supplies the checkpoint and everything the continued run writes (config, checkpoints of "
        "the rounds still to run, results with DIR's earlier rounds) goes into --out",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="run directory, absent or empty (default: <output.dir>/<name>-<timestamp>); with --resume DIR, "
        "the directory the continued run is written into instead of DIR (default: DIR)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="a new run into --out replaces the run files already there (by default it is refused); only "
        "with --out",
    )
    parser.add_argument(
        "--bundle-only",
        action="store_true",
        help="only build (or find) the run's emulator bundle and print its directory, e.g. to "
        "copy it to the data owners of a deployment",
    )


def run_simulate(args: argparse.Namespace) -> None:
    """``scaleot simulate``: parse and validate the config, then run it (``simulate``)."""
    quiet_environment()  # before torch is imported: OpenMP reads its settings once
    # The config is read and checked before anything imports torch or Flower: bad input fails in a second.
    if args.bundle_only:
        # It writes no run: silently ignoring where a run would go leaves the user looking for one.
        ignored = [opt for opt, given in (("--out", args.out), ("--overwrite", args.overwrite)) if given]
        if ignored:
            raise ValueError(
                f"{' and '.join(ignored)} with --bundle-only: it builds (or finds) the emulator bundle in "
                "$SCALEOT_CACHE/bundles and writes no run; drop --bundle-only to run, or the other option"
            )
    if args.resume is not None:
        if args.overwrite:
            raise ValueError("--overwrite starts a new run over an old one; it does not go with --resume")
        if args.config:
            raise ValueError(
                f"--config={args.config} does not go with --resume: a resumed run keeps the config in "
                f"{args.resume}; change what a resume may change with --set"
            )
        config = resume_config(args.resume, args.overrides)
        check_resumable(args.resume, config)  # here too: before Ray starts, not after
        run_dir = args.out or args.resume
    elif args.config:
        if args.overwrite and args.out is None:
            raise ValueError(
                "--overwrite without --out: a new run goes into a new directory <output.dir>/<name>-<time>, "
                "with nothing to replace; give --out DIR with it, or drop --overwrite"
            )
        config = load_config(args.config, args.overrides)
        from simulations.server.app import new_run_dir  # torch and Flower: only for a valid config

        run_dir = args.out or new_run_dir(config)
    else:
        raise ValueError("give --config FILE (a new run) or --resume DIR (continue one)")
    if args.bundle_only:
        print(prepare_bundle(config))
        return
    if args.out is not None:
        origin = f"--out={args.out}"
    else:
        origin = f"--resume={args.resume}" if args.resume else f"config output.dir={config.output.dir!r}"
    metrics = simulate(config, Path(run_dir), resume=args.resume, overwrite=args.overwrite, origin=origin)
    from emulator.results import ROW_LABELS

    for name, row in metrics["results"].items():
        log.info(
            "%-12s %5.1f ± %.1f %%", ROW_LABELS.get(name, name), 100 * row["acc"], 100 * row["acc_stderr"]
        )


def prepare_bundle(config: RunConfig) -> Path:
    """Build or reuse the emulator bundle ``config`` would distribute; the ServerApp finds the same one."""
    from simulations.server.bundle_cache import ensure_bundle
    from simulations.server.federation import load_run_model

    model, tokenizer = load_run_model(config)
    return ensure_bundle(config.model, config.emulator, model, tokenizer)
