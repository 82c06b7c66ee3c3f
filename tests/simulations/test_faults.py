"""Faults end to end, `scaleot simulate` on tiny.toml (tiny-llama, synthetic task) (issue 12 Faults, issue 14
items 1 and 4).

On the in-process backend, in this process (the default tier): every client failing, and every client failing
for a data reason. On Flower's real simulation engine with the Ray backend (the system tier), each run in a
process of its own started in a new session, so that every process it leaves (the Ray head, actors) is stopped
by that session's id: a client process dying mid-round, a client slower than the round timeout, the server
killed mid-round then resumed from a damaged checkpoint, a Ray backend that cannot start, and fewer nodes than
``federation.num_clients``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import INPROCESS, ROOT, full_run_args, sets, start_scaleot, stop_session
from conftest import TINY_CONFIG as CONFIG
from safetensors.torch import load_file

from simulations.cli import main
from simulations.run_config import load_config
from strategies.nodes import sample_partitions


def start(run_dir: Path, *args: str) -> subprocess.Popen:
    """`scaleot simulate ARGS` in a session of its own, its log in ``run_dir.log``."""
    return start_scaleot(Path(f"{run_dir}.log"), "simulate", *args)


def finish(proc: subprocess.Popen, timeout: float = 900) -> int:
    """Wait for ``proc``, then stop whatever it left behind in its session (Ray's processes)."""
    try:
        return proc.wait(timeout=timeout)
    finally:
        stop_session(proc)


def simulate(run_dir: Path, *args: str, timeout: float = 900) -> tuple[int, str]:
    rc = finish(start(run_dir, "--out", str(run_dir), *args), timeout)
    return rc, Path(f"{run_dir}.log").read_text()


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def sampled(config_overrides: list[str], server_round: int) -> list[int]:
    config = load_config(CONFIG, config_overrides)
    fed = config.federation
    k = max(int(fed.num_clients * fed.fraction), fed.min_clients)
    return sample_partitions(fed.num_clients, k, config.seed, server_round)


def inprocess(run_dir: Path, capsys, caplog, *args: str) -> tuple[int, str, str]:
    """`scaleot simulate --out run_dir ARGS` on the in-process backend, in this process: its exit status, its
    last stderr line and its log."""
    with caplog.at_level(logging.INFO):
        rc = main(["simulate", "--out", str(run_dir), *INPROCESS, *args])
    return rc, capsys.readouterr().err.strip().splitlines()[-1], caplog.text


@pytest.mark.slow
def test_a_run_in_which_every_client_fails_exits_non_zero_without_fine_tuned_rows(tmp_path, capsys, caplog):
    # Issue 14 §1, its own input.
    run_dir = tmp_path / "all-fail"
    rc, last, log = inprocess(
        run_dir, capsys, caplog, "--config", CONFIG, *sets("federation.fail_partitions=[0,1,2,3]")
    )
    assert rc == 1, log[-3000:]
    assert last.startswith("error: no client reply was aggregated in any of the 2 round(s)"), last
    assert "most common client failure (4 of 4): client error" in last and "fails on purpose" in last
    assert log.count("NOTHING AGGREGATED") == 2
    saved = metrics(run_dir)
    assert saved["status"] == "failed" and saved["reason"] == last.removeprefix("error: ")
    assert set(saved["results"]) == {"full_zs", "emulator_zs"} and saved["privacy_gap"] is None
    assert all(r["empty"] and r["plug_in_acc"] is None for r in saved["rounds"])
    assert not (run_dir / "adapter.safetensors").exists()
    assert "Run failed" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_run_in_which_every_client_would_fail_for_a_data_reason_stops_before_any_round(
    tmp_path, capsys, caplog
):
    # A label skew so extreme (Dirichlet alpha 1e-4) that no draw gives every client an example: every client
    # would fail to build its partition. The server splits the train set once before any round (the clients'
    # own split), so the run ends there with the reason, instead of training nothing for a round.
    run_dir = tmp_path / "no-partition"
    overrides = ["federation.partition=dirichlet", "federation.dirichlet_alpha=0.0001", "federation.rounds=1"]
    rc, last, log = inprocess(run_dir, capsys, caplog, "--config", CONFIG, *sets(*overrides))
    assert rc != 0, log[-3000:]
    assert "federation.num_clients=4, partition='dirichlet' cannot split" in last, last
    assert "round 1/" not in log and not (run_dir / "adapter.safetensors").exists()
    results = metrics(run_dir).get("results", {}) if (run_dir / "metrics.json").exists() else {}
    assert not {"emulator_ft", "plug_in"} & set(results)


ROUND_TIMEOUT, SLOW_SECONDS = 30, 45  # timeout < slow < 2 × timeout: a late reply lands in the next round


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory) -> tuple[Path, dict, str]:
    """Three rounds, two actors: a partition whose process dies in round 1 (and is sampled only then), and
    one slower than the round timeout, sampled in rounds 2 and 3: its round-2 reply comes during round 3,
    which waits out its own timeout for that partition's round-3 reply."""
    for seed in range(100):
        # Two actors (one CPU each): a sleeping one blocks only itself.
        base = ["simulation.client_num_cpus=1", f"seed={seed}"]
        first, second, third = (set(sampled(base, r)) for r in (1, 2, 3))
        crashes, slows = sorted(first - second - third), sorted((second & third) - first)
        if crashes and slows:
            crash, slow = crashes[0], slows[0]
            break
    overrides = [
        *base,
        "federation.rounds=3",
        f"federation.crash_partitions=[{crash}]",
        f"federation.slow_partitions=[{slow}]",
        f"federation.slow_seconds={SLOW_SECONDS}",
        f"federation.round_timeout={ROUND_TIMEOUT}",
        "evaluation.emulator_every=0",
    ]
    run_dir = tmp_path_factory.mktemp("faulty") / "run"
    args = [a for o in overrides for a in ("--set", o)]
    rc, log = simulate(run_dir, "--config", CONFIG, *args, timeout=1500)
    assert rc == 0, log[-4000:]
    return run_dir, {"crash": crash, "slow": slow}, log


@pytest.mark.system
def test_a_client_process_that_dies_mid_round_is_recorded_and_later_rounds_go_on(faulty_run):
    run_dir, parts, log = faulty_run
    rounds = metrics(run_dir)["rounds"]
    first = rounds[0]
    assert parts["crash"] in first["sampled_partitions"]
    # The round completes with the reply that arrived; the dead client is recorded with its reason.
    assert first["aggregated"] == first["sampled"] - 1 >= 1 and not first["empty"], first["rejections"]
    assert len(first["rejections"]) == 1 and "client process died" in first["rejections"][0]
    assert "exiting the client process (federation.crash_partitions)" in log
    # Later rounds go on and train once Ray has restarted the actor. A client sent to it while it restarts is
    # one more recorded rejection ("actor is restarting"), never a stalled or failed run.
    assert [r["round"] for r in rounds] == [1, 2, 3] and any(r["aggregated"] >= 1 for r in rounds[1:])
    later = [reason for r in rounds[1:] for reason in r["rejections"]]
    assert all("no reply within" in reason or "client process died" in reason for reason in later), later
    assert metrics(run_dir)["status"] == "finished"


@pytest.mark.system
def test_a_client_slower_than_the_round_timeout_is_cut_off_and_its_late_reply_never_mixed_in(faulty_run):
    run_dir, parts, _ = faulty_run
    second, third = metrics(run_dir)["rounds"][1:]
    for record in (second, third):
        assert parts["slow"] in record["sampled_partitions"]
        timed_out = [r for r in record["rejections"] if f"no reply within {ROUND_TIMEOUT} s" in r]
        # Besides the slow client, only a client sent to the crashed actor while Ray restarts it is refused.
        others = [r for r in record["rejections"] if r not in timed_out]
        assert len(timed_out) == 1 and all("actor is restarting" in r for r in others), record["rejections"]
        assert record["missing"] == 1
        assert record["aggregated"] == record["sampled"] - len(record["rejections"])
        # Closed at the timeout, not when the slow client answered.
        assert ROUND_TIMEOUT <= record["seconds"] - record["eval_seconds"] < SLOW_SECONDS
    # The slow client's round-2 reply was sent after SLOW_SECONDS, i.e. while round 3 waited: it is neither
    # counted as a round-3 reply nor aggregated into the round-3 adapter.
    assert second["seconds"] + third["seconds"] > 2 * ROUND_TIMEOUT > SLOW_SECONDS
    assert third["replied"] == third["sampled"] - 1


@pytest.mark.system
def test_the_server_killed_mid_round_resumes_past_a_damaged_checkpoint_to_the_same_adapter(
    full_run, failing_partition, tmp_path
):
    # The reference is conftest's uninterrupted full_run (3 rounds); this run has the same options.
    killed = tmp_path / "killed"
    proc = start(killed, *full_run_args(failing_partition), "--out", str(killed))
    try:
        deadline = time.monotonic() + 900
        while not (killed / "checkpoint" / "round-0002").is_dir():  # round 3 is under way from here
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before round 2"
            time.sleep(0.5)
    finally:
        stop_session(proc)  # SIGKILL: the server and its Ray processes, mid-round
    assert metrics(killed)["status"] == "running" and not (killed / "adapter.safetensors").exists()

    # The newest checkpoint is damaged afterwards: resume refuses it and continues from round 1's.
    newest = killed / "checkpoint" / "round-0002" / "adapter.safetensors"
    newest.write_bytes(newest.read_bytes()[:-16])
    rc = finish(start(killed.with_name("resume"), "--resume", str(killed)))
    log = Path(f"{killed.with_name('resume')}.log").read_text()
    assert rc == 0, log[-3000:]
    assert "refusing checkpoint" in log and "round-0002/adapter.safetensors has sha256" in log
    assert (killed / "checkpoint" / "refused-round-0002" / "adapter.safetensors").is_file()
    assert [r["round"] for r in metrics(killed)["rounds"]] == [1, 2, 3]

    final = load_file(str(killed / "adapter.safetensors"))
    expected = load_file(str(full_run / "adapter.safetensors"))
    assert final.keys() == expected.keys()
    for key in expected:
        assert final[key].equal(expected[key]), key


@pytest.mark.system
def test_a_backend_that_cannot_start_ends_the_run_at_once_with_its_reason(tmp_path):
    # Ray refuses an object store this small: the backend crashes while the server is still loading.
    run_dir = tmp_path / "no-ray"
    began = time.monotonic()
    rc, log = simulate(
        run_dir,
        "--config",
        CONFIG,
        "--set",
        "simulation.ray_init_args={object_store_memory=1000}",
        timeout=600,
    )
    assert rc == 1, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: the simulation backend failed: ValueError: Attempting to cap object store")
    assert time.monotonic() - began < 300
    assert not (run_dir / "metrics.json").exists() or metrics(run_dir)["status"] != "finished"
    assert "round 1/" not in log  # no round was started, no client waited for


@pytest.mark.system
def test_fewer_nodes_than_num_clients_is_a_clear_error_never_a_hang(tmp_path):
    # Two SuperNodes for a config that needs four. In a simulation every SuperNode registers at once, so the
    # server says so as soon as the count settles (check_simulated_federation); a deployment, where nodes join
    # over time, waits federation.node_timeout first (test_run_status covers that wait).
    code = (
        "import sys; from pathlib import Path; from flwr.simulation import run_simulation;"
        "from clients.client_app import app; from simulations.run_config import load_config;"
        "from simulations.runner import backend_config, quiet_environment;"
        "from simulations.server.app import server_app_for; quiet_environment();"
        f"c = load_config('{CONFIG}', ['federation.node_timeout=20']);"
        f"run_simulation(server_app=server_app_for(c, Path(r'{tmp_path}')), client_app=app, "
        "num_supernodes=2, backend_name='ray', backend_config=backend_config(c.simulation))"
    )
    log = open(tmp_path / "log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    rc = finish(proc, timeout=600)
    text = (tmp_path / "log").read_text()
    assert rc != 0, text[-3000:]
    assert "federation.num_clients=4 but the simulated federation has 2 SuperNodes" in text, text[-3000:]
