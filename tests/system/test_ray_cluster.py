"""An existing Ray cluster: a head and a second worker node on loopback addresses of this machine, joined
through ``simulation.ray_address``; the clients must train on both nodes.

The cluster is started here with ``ray start`` under its own temporary directory and stopped in a
``finally`` by ending exactly the processes of that directory: ``ray stop`` would end every Ray process of
the machine, other simulations included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import psutil
import pytest
from conftest import BIN, ROOT, free_port

pytestmark = pytest.mark.system

HEAD_IP, WORKER_IP = "127.0.0.1", "127.0.0.2"  # two loopback addresses: two Ray nodes on one machine


def _ray(*args: str, env: dict[str, str]) -> None:
    result = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]


def stop_cluster(temp_dir: str) -> None:
    """End the Ray processes (GCS, raylets, workers) whose command line names ``temp_dir``."""
    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in part for part in proc.info["cmdline"] or []) and proc.pid != os.getpid():
            mine.append(proc)
    for proc in mine:
        proc.terminate()
    # The raylets, the GCS server and the autoscaler monitor outlive SIGTERM (still running after 15 s, the
    # old grace); the cluster is this test's alone, so a short grace before SIGKILL loses nothing.
    _, alive = psutil.wait_procs(mine, timeout=3)
    for proc in alive:
        proc.kill()


@pytest.fixture
def cluster() -> Iterator[str]:
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths live under it
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
    address = f"{HEAD_IP}:{free_port(HEAD_IP)}"
    common = ["--num-cpus=1", "--object-store-memory=150000000", "--disable-usage-stats"]
    try:
        _ray(
            "start",
            "--head",
            f"--node-ip-address={HEAD_IP}",
            f"--port={address.split(':')[1]}",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            *common,
            env=env,
        )
        _ray("start", f"--address={address}", f"--node-ip-address={WORKER_IP}", *common, env=env)
        yield address
    finally:
        stop_cluster(temp_dir)


def test_a_simulation_on_an_existing_two_node_cluster_trains_on_both_nodes(cluster, tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    deadline = time.monotonic() + 60
    while _nodes(cluster, env) < 2:  # the worker registers with the head asynchronously
        assert time.monotonic() < deadline, "the worker node never joined the head"
        time.sleep(2)
    args = ["simulate", "--config", "simulations/configs/tiny.toml", "--out", str(tmp_path)]
    for item in (
        f"simulation.ray_address='{cluster}'",
        "simulation.client_num_cpus=1",
        "federation.rounds=3",
        "federation.fraction=1.0",  # 4 clients a round on 2 one-CPU actors: both actors train
        "evaluation.plug_in_every=0",
        "evaluation.emulator_every=0",
    ):
        args += ["--set", item]
    result = subprocess.run(
        [str(BIN / "scaleot"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    workers = {w for r in metrics["rounds"] for w in r["workers"]}
    assert workers == _node_ids(cluster, env)


def _node_ids(address: str, env: dict[str, str]) -> set[str]:
    code = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
        "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _nodes(address: str, env: dict[str, str]) -> int:
    return len(_node_ids(address, env))
