"""A real Flower deployment on loopback: SuperLink + three SuperNodes with TLS and SuperNode authentication.

Recipe: flower-1.42.md §6. Certificates (a CA and a server certificate for localhost / 127.0.0.1) come from
openssl, node keys (ECDSA P-384) from ssh-keygen, registered with ``flwr supernode register``. Runtime
dependency installation is off and FLWR_HOME is private. Each SuperNode's node config carries its partition
and the path of the emulator bundle, so the emulator never crosses the wire. Three rounds of tiny.toml run via
``flwr run . deploy --stream``, one SuperNode killed after round 1; since ``flwr run`` exits 0 even when the
run fails, the result is checked in the files the ServerApp writes and with ``flwr list --format json``.
Every process started here is stopped by its process group id (each is started in a new session).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import BIN, ROOT, free_port, signal_group
from conftest import TINY_CONFIG as CONFIG
from flwr.app import ArrayRecord
from safetensors.torch import load_file

from simulations.run_config import load_config
from simulations.runner import prepare_bundle

pytestmark = pytest.mark.system


def run(args: list, env: dict, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


class Processes:
    """Long-running processes, each in its own session so that its whole group can be stopped by id."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []

    def start(self, name: str, args: list, env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [str(a) for a in args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((name, proc, log))
        return proc

    def stop(self) -> None:
        for _, proc, _ in reversed(self.started):
            signal_group(proc.pid, signal.SIGTERM)
        for _, proc, log in reversed(self.started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
            signal_group(proc.pid, signal.SIGKILL)  # children left in the group (serverapp, clientapp)
            log.close()

    def tail(self) -> str:
        return "\n".join(
            f"--- {n}.log\n{(self.logs / f'{n}.log').read_text()[-3000:]}" for n, _, _ in self.started
        )


def make_certificates(directory: Path) -> None:
    directory.mkdir()
    (directory / "san.cnf").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=scaleot-test-ca",
    )
    ssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    ssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
    )


def wait_for_port(port: int, procs: Processes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"nothing listens on {port} after {timeout} s\n{procs.tail()}")


@pytest.fixture(scope="module")
def bundle() -> Path:
    return prepare_bundle(load_config(CONFIG))


@contextmanager
def deployment(tmp_path: Path, bundle: Path, num_nodes: int) -> Iterator[tuple[dict, Processes]]:
    """A SuperLink with TLS and SuperNode authentication, and ``num_nodes`` SuperNodes (partition i of
    num_nodes, the bundle from the node config); yields the environment for ``flwr`` and the processes."""
    certs, keys, home = tmp_path / "certs", tmp_path / "keys", tmp_path / "flwr-home"
    make_certificates(certs)
    keys.mkdir()
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n'
    )
    env = os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_WAIT_POLICY": "PASSIVE",  # see simulations/runner.py
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    procs = Processes(tmp_path)
    try:
        procs.start(
            "superlink",
            [
                BIN / "flower-superlink",
                "--ssl-ca-certfile",
                certs / "ca.crt",
                "--ssl-certfile",
                certs / "server.pem",
                "--ssl-keyfile",
                certs / "server.key",
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--database",
                tmp_path / "state.db",
            ],
            env,
        )
        wait_for_port(port, procs)
        for i in range(num_nodes):
            key = keys / f"node{i}"
            subprocess.run(
                ["ssh-keygen", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key), "-C", ""],
                check=True,
                capture_output=True,
            )
            run([BIN / "flwr", "supernode", "register", f"{key}.pub", "deploy"], env)
            node_config = (
                f"partition-id={i} num-partitions={num_nodes} emulator-path='{bundle}' num-threads=1"
            )
            procs.start(
                f"supernode{i}",
                [
                    BIN / "flower-supernode",
                    "--root-certificates",
                    certs / "ca.crt",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--auth-supernode-private-key",
                    key,
                    "--port",
                    free_port(),
                    "--node-config",
                    node_config,
                ],
                env,
            )
        yield env, procs
    finally:
        procs.stop()


def test_tls_supernodes_train_and_one_killed_after_round_one_does_not_stall_later_rounds(tmp_path, bundle):
    # Three authenticated SuperNodes over TLS train round 1 with the bundle from their node config; then
    # (issue 14 §4) one is killed once round 1 is checkpointed. Later rounds wait for min_clients only, a
    # missing reply ends at round_timeout, and the run finishes. One deployment serves both checks: each
    # round starts a ClientApp process per node, and a dead node is noticed only after Flower's heartbeat
    # patience (2 × 30 s), so a second deployment would double the slowest test of the suite.
    run_dir = tmp_path / "run"
    with deployment(tmp_path, bundle, num_nodes=3) as (env, procs):
        overrides = (
            "federation.num_clients=3 federation.min_clients=2 federation.fraction=1.0 federation.rounds=3 "
            "federation.round_timeout=240 federation.node_timeout=120 evaluation.emulator_every=0"
        )
        run_config = f"run-dir='{run_dir}' overrides='{overrides}'"
        submitted = subprocess.Popen(
            [str(BIN / "flwr"), "run", ".", "deploy", "--stream", "--run-config", run_config],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 900
            while (
                not (run_dir / "checkpoint" / "round-0001").is_dir()
                or not (run_dir / "metrics.json").is_file()
            ):
                assert time.monotonic() < deadline, f"round 1 did not finish\n{procs.tail()}"
                time.sleep(1)
            _, node2, _ = next(p for p in procs.started if p[0] == "supernode2")
            signal_group(node2.pid, signal.SIGKILL)
            while json.loads((run_dir / "metrics.json").read_text())["status"] == "running":
                assert time.monotonic() < deadline, f"the run hangs after a SuperNode died\n{procs.tail()}"
                time.sleep(2)
            submitted.wait(timeout=120)
        finally:
            submitted.kill()  # the CLI only streams logs; the run itself lives in the SuperLink
        runs = json.loads(run([BIN / "flwr", "list", "deploy", "--format", "json"], env).stdout)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "finished", procs.tail()
        assert [r.get("status") for r in runs.get("runs", [])] == ["finished:completed"], runs
        assert "plug_in" in metrics["results"]
        rounds = metrics["rounds"]
        assert [r["round"] for r in rounds] == [1, 2, 3]
        assert rounds[0]["aggregated"] == 3 and rounds[0]["rejected"] == 0
        assert sorted(rounds[0]["sampled_partitions"]) == [0, 1, 2]
        # The bundle came from the node config, not the wire: each client received the adapter's bytes only.
        adapter_bytes = ArrayRecord(load_file(str(run_dir / "adapter.safetensors"))).count_bytes()
        assert all(r["bytes_per_client"] == adapter_bytes for r in rounds)
        assert all(r["aggregated"] >= 2 for r in rounds[1:])  # the two live nodes train in every round
        # The dead node is accounted for once: an error reply from the SuperLink, or a missing reply.
        assert all(r["sampled"] - r["aggregated"] == r["missing"] + r["rejected"] for r in rounds)
