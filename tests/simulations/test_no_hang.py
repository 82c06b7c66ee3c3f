"""No hang: a Ray cluster address with nothing listening fails at once in one line, and SIGTERM / SIGINT stop
a run at any stage, leaving a directory `--resume` continues (issue 23 §5), on either backend (in-process in
the default tier, Ray in the system tier)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_CONFIG as CONFIG
from conftest import free_port, sets, start_scaleot, stop_session

from simulations.cli import main


def test_a_ray_address_with_nothing_listening_fails_at_once_before_any_model_loads(tmp_path, capsys):
    port = free_port()
    run_dir = tmp_path / "run"
    began = time.monotonic()
    code = main(
        [
            "simulate",
            "--config",
            CONFIG,
            "--set",
            f"simulation.ray_address='127.0.0.1:{port}'",
            "--out",
            str(run_dir),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: no Ray cluster answers at simulation.ray_address='127.0.0.1:{port}' (Connection refused "
        f"within 10 s); start it (`ray start --head --port={port}`) or correct the address"
    ], err
    assert time.monotonic() - began < 20  # it retried for over ten minutes
    assert not run_dir.exists()  # nothing loaded, nothing written
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()

    assert (
        main(
            ["simulate", "--config", CONFIG, "--set", "simulation.ray_address='head'", "--out", str(run_dir)]
        )
        == 2
    )
    assert "simulation.ray_address='head' is invalid; it must be auto, host:port or ray://host:port" in (
        capsys.readouterr().err
    )


def wait_for(proc: subprocess.Popen, log: Path, ready, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def stopped_by(proc: subprocess.Popen, log: Path, signum: int, run_dir: Path) -> None:
    """Send ``signum`` to the run's own process only; it must end at once with its one line."""
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=30)
    finally:
        stop_session(proc)
    assert time.monotonic() - sent < 30
    name = signal.Signals(signum).name
    last = log.read_text().strip().splitlines()[-1]
    assert code == 128 + signum, log.read_text()[-3000:]
    assert last == (
        f"error: stopped by {name}; {run_dir} keeps every finished round: "
        f"`scaleot simulate --resume {run_dir}` continues the run"
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["inprocess", pytest.param("ray", marks=pytest.mark.system)])
def test_sigint_while_loading_and_sigterm_mid_round_stop_at_once_and_the_run_resumes_to_its_end(
    backend, tmp_path
):
    # In-process the ServerApp runs in the main thread; on Ray in a thread of Flower's while the main thread
    # runs the engine (whose SIGTERM handler ray.init installs): each stops at once, resumable.
    run_dir = tmp_path / "run"
    args = [
        "--config",
        CONFIG,
        *sets("federation.rounds=2", f"simulation.backend={backend}"),
        "--out",
        str(run_dir),
    ]

    # SIGINT while the model owner is still preparing (before any round): resumed, it starts round 1 again.
    log = tmp_path / "first.log"
    proc = start_scaleot(log, "simulate", *args)
    wait_for(proc, log, lambda: (run_dir / "config.json").is_file(), "the run directory's config")
    stopped_by(proc, log, signal.SIGINT, run_dir)
    assert not (run_dir / "checkpoint").exists()

    # Resumed, then SIGTERM while round 2 is under way.
    log = tmp_path / "second.log"
    proc = start_scaleot(log, "simulate", "--resume", str(run_dir))
    wait_for(proc, log, lambda: (run_dir / "checkpoint" / "latest").is_file(), "round 1's checkpoint")
    stopped_by(proc, log, signal.SIGTERM, run_dir)
    assert (run_dir / "checkpoint" / "latest").read_text() == "round-0001"

    # Resumed again, it finishes from round 1's checkpoint.
    log = tmp_path / "third.log"
    proc = start_scaleot(log, "simulate", "--resume", str(run_dir))
    try:
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        stop_session(proc)
    assert "resuming" in log.read_text() and "after round 1" in log.read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and [r["round"] for r in metrics["rounds"]] == [1, 2]
