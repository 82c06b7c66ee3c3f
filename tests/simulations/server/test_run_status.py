"""Never report a wrong result (issue 14 items 1 and 4; issue 12 checkpoints): empty rounds are marked, an
untrained run fails with its reason and no fine-tuned rows, every wait has a limit, checkpoints are verified.

The strategy runs Flower's own ``Strategy.start`` loop on conftest's ``FakeGrid`` (a fake of the network);
outputs and checkpoints are real files. The same faults end to end are in
``tests/simulations/test_faults.py``.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from conftest import FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from emulator.results import MEASURES, ROW_LABELS, MCResult
from simulations.run_config import load_config
from simulations.runner import BackendWatch
from simulations.server.evaluation import EMULATOR_FT, EMULATOR_ZS, FULL_ZS, PLUG_IN
from simulations.server.outputs import RunState, load_checkpoint, save_checkpoint, write_metrics, write_report
from strategies import wire
from strategies.nodes import await_nodes
from strategies.offsite import offsite_strategy
from strategies.records import RoundRecord, RunFailedError, RunStopped, nothing_trained_reason, progress_line
from strategies.settings import EmulatorOffer, Sampling, ServerEvaluation

SHAPES = {"0.mlp.weight": (4, 3), "7.norm.weight": (4,)}
ROW = {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.5, "acc_norm_stderr": 0.1, "n": 4}
ZERO_SHOT = {FULL_ZS: MCResult.from_row(ROW), EMULATOR_ZS: MCResult.from_row(ROW)}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def adapter(value: float = 0.0) -> ArrayRecord:
    return ArrayRecord({k: Array(np.full(s, value, dtype=np.float32)) for k, s in SHAPES.items()})


def trained(msg: Message) -> Message:
    metrics = MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 1.0})
    return Message(RecordDict({wire.ARRAYS: adapter(1.0), wire.METRICS: metrics}), reply_to=msg)


def failed(msg: Message) -> Message:
    # What a ClientApp raising for a data reason looks like on the server
    # (emulator.data.encoding.training_batches).
    node = msg.metadata.dst_node_id
    reason = (
        f"Traceback ...\nValueError: epochs=0.001 / steps=None must give at least one batch (node {node})"
    )
    return Message(Error(0, reason), reply_to=msg)


def strategy(evaluated: list | None = None, **kwargs):
    def evaluate(server_round, arrays, with_emulator):
        evaluated.append(server_round)
        plug_in = {f"{wire.PLUG_IN}_{m}": 0.6 for m in MEASURES}
        return plug_in | {f"{wire.EMULATOR_FT}_{m}": 0.4 for m in MEASURES} | {wire.EVAL_N: 4.0}

    return offsite_strategy(
        "fedavg",
        offer=EmulatorOffer("/bundle"),
        sampling=kwargs.pop("sampling", Sampling(node_timeout=5.0)),
        evaluation=ServerEvaluation(None if evaluated is None else evaluate),
        **kwargs,
    )


def test_rounds_in_which_every_client_fails_are_marked_and_nothing_is_scored(caplog):
    evaluated: list[int] = []
    run = strategy(evaluated)
    with caplog.at_level(logging.INFO, logger="strategies.offsite"):
        run.start(FakeGrid({1: 0, 2: 1, 3: 2}, failed), adapter(0.0), num_rounds=2)
    assert [r.empty for r in run.history] == [True, True]
    assert all(r.aggregated == 0 and r.rejected == 3 for r in run.history)
    assert evaluated == []  # the untrained adapter is never scored: no plug-in or emulator numbers exist
    lines = [r.message for r in caplog.records if r.message.startswith("round ")]
    assert sum("NOTHING AGGREGATED" in line and "must give at least one batch" in line for line in lines) == 2

    reason = nothing_trained_reason(run.history)
    assert reason.startswith("no client reply was aggregated in any of the 2 round(s)")
    assert "most common client failure (6 of 6): client error (code 0): ValueError: epochs=0.001" in reason


def test_an_untrained_run_fails_with_its_reason_and_no_fine_tuned_rows(tmp_path):
    from simulations.server.federation import _finish, failure_recorded

    config = load_config("simulations/configs/tiny.toml")
    history = [RoundRecord(round=1, sampled=2, rejected=2, empty=True, rejections=["node 5: boom 1"] * 2)]
    state = RunState(zero_shot=dict(ZERO_SHOT), history=history)
    with pytest.raises(RunFailedError, match=r"most common client failure \(2 of 2\): boom 1"):
        with failure_recorded(tmp_path, config, state):  # as run_federation runs it
            _finish(tmp_path, config, state, adapter(0.0))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "nothing was trained" in metrics["reason"]
    assert set(metrics["results"]) == {FULL_ZS, EMULATOR_ZS} and metrics["privacy_gap"] is None
    assert metrics["empty_rounds"] == 1
    assert not (tmp_path / "adapter.safetensors").exists()
    report = (tmp_path / "report.md").read_text()
    assert "**Run failed:** no client reply was aggregated" in report
    results_table = report.split("| round |")[0]
    assert ROW_LABELS[PLUG_IN] not in results_table and ROW_LABELS[EMULATOR_FT] not in results_table


def test_a_run_ended_by_an_error_is_recorded_failed_and_a_stopped_one_is_not(tmp_path):
    from simulations.server.federation import failure_recorded

    config = load_config("simulations/configs/tiny.toml")
    state = RunState(zero_shot=dict(ZERO_SHOT), history=[RoundRecord(round=1)])
    with pytest.raises(RunStopped), failure_recorded(tmp_path, config, state):
        raise RunStopped("stopped by SIGTERM")  # resumable as it is: not a failure
    assert not (tmp_path / "metrics.json").exists()

    with pytest.raises(KeyError), failure_recorded(tmp_path, config, state):
        raise KeyError("plug_in_acc")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["status"], metrics["reason"], metrics["rounds_done"]) == (
        "failed",
        "KeyError: 'plug_in_acc'",
        1,
    )
    assert "**Run failed:** KeyError: 'plug_in_acc'." in (tmp_path / "report.md").read_text()


def test_some_empty_rounds_are_counted_in_the_summary_and_report(tmp_path):
    evaluated: list[int] = []
    run = strategy(evaluated)
    grid = FakeGrid({1: 0, 2: 1}, lambda m: failed(m) if run._record.round == 2 else trained(m))
    run.start(grid, adapter(0.0), num_rounds=3)
    assert [r.empty for r in run.history] == [False, True, False]
    assert evaluated == [1, 2, 3]  # a trained adapter is scored even in a round that changed nothing
    state = RunState(zero_shot=dict(ZERO_SHOT), history=run.history)
    write_metrics(tmp_path, state, {}, finished=True)
    write_report(tmp_path, state, title="t")
    assert json.loads((tmp_path / "metrics.json").read_text())["empty_rounds"] == 1
    report = (tmp_path / "report.md").read_text()
    assert "**1 of 3 rounds aggregated no client reply**" in report
    assert "| 2 | nothing aggregated |" in report
    assert "NOTHING AGGREGATED" in progress_line(run.history[1], 3)


def test_waiting_for_nodes_ends_with_an_error_or_proceeds_as_configured():
    grid = FakeGrid({1: 0, 2: 1}, trained)
    with pytest.raises(RunFailedError, match=r"only 2 of 3 nodes connected after waiting 0.3 s"):
        await_nodes(grid, 3, timeout=0.3)
    assert await_nodes(grid, 3, timeout=0.3, proceed=True) == {1, 2}
    with pytest.raises(RunFailedError, match="backend failed: boom"):
        await_nodes(grid, 3, timeout=60, check=_raise("the simulation backend failed: boom"))
    with pytest.raises(RunFailedError, match="only 0 of 1 nodes"):
        await_nodes(FakeGrid({}, trained), 1, timeout=0.2, proceed=True)  # proceeding needs someone


def test_after_a_node_dies_later_rounds_wait_only_for_enough_nodes_to_sample():
    # Three nodes, min_clients=2: the first round needs all three, later rounds two (issue 14 §4).
    grid = FakeGrid({1: 0, 2: 1, 3: 2}, trained)
    run = strategy(
        sampling=Sampling(min_available_nodes=3, min_train_nodes=2, fraction_train=1.0, node_timeout=0.5)
    )
    # Node 3 dies after round 1, node 2 after round 3.
    run.on_round_end = lambda record, arrays: grid.partition_of.pop({1: 3, 3: 2}.get(record.round), None)
    # Fewer than min_clients later on is an error after node_timeout, not a wait without end.
    with pytest.raises(RunFailedError, match="only 1 of 2 nodes connected after waiting 0.5 s"):
        run.start(grid, adapter(0.0), num_rounds=4)
    assert [(r.sampled, r.aggregated) for r in run.history] == [(3, 3), (2, 2), (2, 2)]


def test_missing_replies_are_recorded_and_a_reply_to_another_round_is_never_aggregated():
    run = strategy(sampling=Sampling(fraction_train=1.0, node_timeout=5.0))
    grid = FakeGrid({1: 0, 2: 1, 3: 2}, trained)
    run.set_adapter_spec(adapter())
    run.start(grid, adapter(0.0), num_rounds=1)  # round 1: all three reply
    messages = list(run.configure_train(2, adapter(0.0), ConfigRecord(), grid))
    assert {m.metadata.group_id for m in messages} == {"2"}
    late = trained(messages[0])
    late.metadata.group_id = "1"  # a reply to round 1's message, arriving now
    _, _ = run.aggregate_train(2, [late, trained(messages[1])])  # node of messages[2] never answered
    record = run._record
    assert (record.missing, record.rejected, record.aggregated) == (1, 1, 1)
    assert any("no reply within 3600 s" in r for r in record.rejections)
    assert any("a reply to round 1's message, not this round's" in r for r in record.rejections)


def test_a_tampered_or_truncated_checkpoint_is_refused_and_the_previous_good_one_used(tmp_path, caplog):
    state = RunState(zero_shot=dict(ZERO_SHOT))
    for n in (1, 2, 3):
        state.history.append(RoundRecord(round=n))
        save_checkpoint(tmp_path, {"w": np.full(3, float(n), np.float32)}, {}, state)
    root = tmp_path / "checkpoint"
    assert sorted(p.name for p in root.glob("round-*")) == ["round-0002", "round-0003"]  # two generations

    newest = root / "round-0003" / "adapter.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated
    truncated = newest.read_bytes()
    with caplog.at_level(logging.WARNING, logger="simulations.server.outputs"):
        checkpoint = load_checkpoint(tmp_path)
    assert len(checkpoint.state.history) == 2 and checkpoint.adapter["w"][0] == 2.0
    assert any("round-0003/adapter.safetensors has sha256" in r.message for r in caplog.records)
    kept = root / "refused-round-0003" / "adapter.safetensors"
    assert kept.read_bytes() == truncated  # set aside for inspection, never overwritten
    assert (root / "round-0002" / "adapter.safetensors").is_file()

    state_file = root / "round-0002" / "state.json"
    state_file.write_text(state_file.read_text().replace('"round": 1', '"round": 9'))  # tampered
    with pytest.raises(ValueError, match=r"no intact checkpoint .*round-0002: .*state.json has sha256"):
        load_checkpoint(tmp_path)
    assert (root / "refused-round-0002" / "state.json").is_file()


def test_a_dead_backend_is_reported_with_its_root_cause():
    watch = BackendWatch()
    watch.check()  # nothing yet
    try:
        try:
            raise ValueError("The ActorPool is empty")
        except ValueError as root:
            raise RuntimeError("Simulation Runtime crashed.") from root
    except RuntimeError as wrapped:
        watch.fail(wrapped)
    with pytest.raises(RunFailedError, match="simulation backend failed: ValueError: The ActorPool is empty"):
        watch.check()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.on_missing_nodes='wait'", "federation.on_missing_nodes='wait' is invalid"),
        ("federation.round_timeout=0", "federation.round_timeout=0.0 is invalid"),
        ("federation.crash_partitions=[4]", "federation.crash_partitions=[4] is invalid"),
    ],
)
def test_wait_and_fault_settings_are_checked(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("simulations/configs/tiny.toml", [override])


def _raise(message: str):
    def check() -> None:
        raise RunFailedError(message)

    return check


def test_a_client_process_that_died_is_named_as_such_in_the_reason():
    from strategies.replies import AdapterSpec, reply_problem

    train = Message(RecordDict({wire.ARRAYS: adapter()}), dst_node_id=4, message_type="train")
    ray_error = (
        "<class 'ray.exceptions.ActorUnavailableError'>:<'The actor 1f is unavailable: Socket closed'>"
    )
    problem = reply_problem(Message(Error(0, ray_error), reply_to=train), AdapterSpec.of(adapter()))
    assert problem.startswith("client process died (ActorUnavailableError): ")
    raised = reply_problem(Message(Error(2, "ValueError: bad"), reply_to=train), AdapterSpec.of(adapter()))
    assert raised == "client error (code 2): ValueError: bad"


def test_waiting_for_replies_stops_when_the_backend_dies_and_ends_at_the_timeout():
    from strategies.nodes import CheckedGrid

    def silent():  # node 2 never answers (a dead backend, or a client slower than the timeout)
        return FakeGrid({}, lambda m: trained(m) if m.metadata.dst_node_id == 1 else None)

    messages = [Message(RecordDict({}), dst_node_id=n, message_type="train") for n in (1, 2)]
    began = time.monotonic()
    replies = CheckedGrid(silent(), check=lambda: None, poll=0.05).send_and_receive(messages, timeout=0.5)
    assert [r.metadata.src_node_id for r in replies] == [1] and 0.5 <= time.monotonic() - began < 5
    dead = BackendWatch()
    dead.reason = "ValueError: Ray did not start"
    began = time.monotonic()
    with pytest.raises(RunFailedError, match="Ray did not start"):
        CheckedGrid(silent(), check=dead.check, poll=0.05).send_and_receive(messages, timeout=3600)
    assert time.monotonic() - began < 5
