"""Flower's own run path: ``flwr run .`` against the local SuperLink the CLI starts (simulation runtime, Ray).

The fast test pins the up-front check that a simulated federation has ``federation.num_clients`` SuperNodes.
The system-tier one runs tiny.toml for one round with experiment keys given as ``--run-config`` (the declared
keys of pyproject's ``[tool.flwr.app.config]``), then submits a run to a federation with too few SuperNodes,
which must fail at once instead of waiting forever. ``flwr run`` exits 0 even when a run fails, so results are
checked with ``flwr list --format json`` and in the run directory. FLWR_HOME and the SuperLink's ports are
private to the test; the SuperLink (detached by the CLI, alive after ``flwr run``) is stopped by its process
group, found by its port.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from conftest import BIN, ROOT, free_port, signal_group
from flwr.superlink.grid import InMemoryGrid

from simulations.server.federation import check_simulated_federation


class _SimulatedGrid(InMemoryGrid):
    """Flower's simulation grid type, with a fixed node list instead of a link state."""

    def __init__(self, node_ids: list[int]) -> None:  # no super().__init__: no link state needed
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def test_a_simulated_federation_with_too_few_supernodes_fails_at_once():
    check_simulated_federation(_SimulatedGrid([1, 2, 3, 4]), num_clients=4, poll_s=0)
    check_simulated_federation(_SimulatedGrid([1, 2, 3, 4, 5]), num_clients=4, poll_s=0)
    with pytest.raises(ValueError, match="num_clients=4 but the simulated federation has 2 SuperNodes"):
        check_simulated_federation(_SimulatedGrid([1, 2]), num_clients=4, poll_s=0)


@pytest.fixture
def flwr_env(tmp_path) -> Iterator[dict[str, str]]:
    """Environment for ``flwr``: private FLWR_HOME and ports; stops the SuperLink the CLI leaves running."""
    port = str(free_port())
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # flwr starts `flower-superlink` from PATH
        "PYTHONPATH": str(ROOT),
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": port,
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    yield env
    superlink = f"flower-superlink.*--port {port}"
    found = subprocess.run(["pgrep", "-f", superlink], capture_output=True, text=True)
    for pid in found.stdout.split():
        try:
            signal_group(os.getpgid(int(pid)))  # detached: its own group, with superexec and Ray
        except ProcessLookupError:  # gone between pgrep and here
            pass


def _flwr_run(env: dict[str, str], federation: str, run_config: str) -> tuple[dict, str]:
    """Submit one run, stream it to the end; return its ``flwr list`` entry and the streamed log."""
    args = ["run", ".", "--stream", "--federation-config", federation, "--run-config", run_config]
    out = subprocess.run(
        [str(BIN / "flwr"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    log = out.stdout + out.stderr
    listed = subprocess.run(
        [str(BIN / "flwr"), "list", "--format", "json"], env=env, capture_output=True, text=True, timeout=60
    )
    runs = json.loads(listed.stdout)["runs"]
    assert runs, f"no run listed\n{log[-3000:]}"
    return max(runs, key=lambda r: r["pending-at"]), log


@pytest.mark.system
def test_flwr_run_takes_declared_keys_and_rejects_a_short_federation(flwr_env, tmp_path):
    run_dir = tmp_path / "run"
    keys = "federation.rounds=1 federation.num_clients=2 evaluation.test_limit=16"
    run, log = _flwr_run(flwr_env, "num-supernodes=2", f"{keys} run-dir='{run_dir}'")
    assert run["status"] == "finished:completed", log[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = metrics["config"]
    assert (config["federation"]["rounds"], config["federation"]["num_clients"]) == (1, 2)
    assert config["emulator"]["method"] == "scaleot"  # the rest is tiny.toml's, the default config-file
    assert metrics["status"] == "finished" and len(metrics["rounds"]) == 1
    assert (run_dir / "adapter.safetensors").is_file()

    run, log = _flwr_run(flwr_env, "num-supernodes=1", f"{keys} run-dir='{tmp_path / 'short'}'")
    assert run["status"] == "finished:failed"
    assert "federation.num_clients=2 but the simulated federation has 1 SuperNodes" in log
