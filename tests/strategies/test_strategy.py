"""The offsite-tuning strategy: reply checks, aggregation by Flower's strategies, sampling, resume."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies import wire
from strategies.nodes import sample_partitions
from strategies.offsite import offsite_strategy, strategy_parameters
from strategies.settings import EmulatorOffer, Sampling, ServerEvaluation

SHAPES = {"0.mlp.weight": (4, 3), "7.mlp.weight": (3, 4), "7.norm.weight": (4,)}


@pytest.fixture(autouse=True)
def task_identity():
    # Message() needs the process's task identity (flower-1.42.md §10.8).
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def adapter(value: float = 0.0, dtype=np.float32, shapes=SHAPES) -> ArrayRecord:
    return ArrayRecord({k: Array(np.full(s, value, dtype=dtype)) for k, s in shapes.items()})


def train_msg(node: int, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict(
        {wire.ARRAYS: arrays or adapter(), wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1})}
    )
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


def reply(node: int, arrays: ArrayRecord, examples: int = 10, loss: float = 1.0) -> Message:
    metrics = MetricRecord({wire.NUM_EXAMPLES: examples, wire.TRAIN_LOSS: loss})
    return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=train_msg(node))


def make(name: str = "fedavg", **kwargs) -> object:
    strategy = offsite_strategy(name, offer=kwargs.pop("offer", EmulatorOffer("/bundle")), **kwargs)
    strategy.set_adapter_spec(adapter())
    return strategy


def bad_replies() -> dict[str, Message]:
    nan = adapter(1.0)
    nan["7.norm.weight"] = Array(np.array([1.0, np.nan, 1.0, 1.0], dtype=np.float32))
    wrong_shape = adapter(1.0, shapes={**SHAPES, "7.norm.weight": (5,)})
    wrong_key = adapter(1.0, shapes={**SHAPES, "6.extra.weight": (2,)})
    return {
        "adapter keys differ": reply(11, wrong_key),
        "shape (5,), expected (4,)": reply(12, wrong_shape),
        "contains NaN": reply(13, nan),
        "dtype float64, expected float32": reply(14, adapter(1.0, dtype=np.float64)),
        "'num-examples' must be positive": reply(15, adapter(1.0), examples=0),
        "client error (code 3): RuntimeError: boom": Message(
            Error(3, "Traceback ...\nRuntimeError: boom"), reply_to=train_msg(16)
        ),
    }


def test_bad_replies_are_dropped_with_their_reason_and_the_rest_aggregated(caplog):
    strategy = make()
    good = [reply(1, adapter(1.0), examples=10), reply(2, adapter(3.0), examples=30)]
    bad = bad_replies()
    with caplog.at_level(logging.WARNING, logger="strategies.offsite"):
        arrays, metrics = strategy.aggregate_train(1, [*good, *bad.values()])
    for reason, msg in bad.items():
        node = msg.metadata.src_node_id
        assert any(f"node {node}: " in r.message and reason in r.message for r in caplog.records), reason
    # Weighted by examples: (10·1 + 30·3) / 40.
    for array in arrays.values():
        np.testing.assert_allclose(array.numpy(), 2.5)
    assert metrics[wire.TRAIN_LOSS] == pytest.approx(1.0)
    record = strategy._record
    assert (record.replied, record.rejected, record.aggregated) == (8, 6, 2)


def test_only_bad_replies_leave_the_adapter_unchanged():
    arrays, metrics = make().aggregate_train(1, list(bad_replies().values()))
    assert arrays is None and metrics is None


def test_fedavg_of_identical_adapters_is_that_adapter():
    arrays, _ = make().aggregate_train(1, [reply(n, adapter(0.7), examples=n) for n in (1, 2, 3)])
    for key, array in arrays.items():
        np.testing.assert_allclose(array.numpy(), np.full(SHAPES[key], 0.7, np.float32), rtol=1e-6)


def test_metric_key_mismatch_drops_the_odd_reply_instead_of_raising():
    odd = Message(
        RecordDict({wire.ARRAYS: adapter(9.0), wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 5})}),
        reply_to=train_msg(9),
    )
    arrays, _ = make().aggregate_train(1, [reply(1, adapter(1.0)), reply(2, adapter(1.0)), odd])
    np.testing.assert_allclose(arrays["0.mlp.weight"].numpy(), 1.0)


@pytest.mark.parametrize("name, kwargs", [("fedprox", {"proximal_mu": 0.1}), ("fedadam", {"eta": 0.1})])
def test_other_flower_strategies_aggregate(name, kwargs):
    strategy = make(name, **kwargs)
    grid = FakeGrid({101: 0, 102: 1}, client=lambda msg: reply(msg.metadata.dst_node_id, adapter(1.0)))
    messages = list(strategy.configure_train(1, adapter(0.0), ConfigRecord(), grid))
    if name == "fedprox":
        assert all(m.content[wire.CONFIG][wire.PROXIMAL_MU] == 0.1 for m in messages)
    arrays, _ = strategy.aggregate_train(1, [*grid.send_and_receive(messages), *bad_replies().values()])
    assert set(arrays) == set(SHAPES)
    assert all(a.dtype == "float32" for a in arrays.values())  # FedAdam computes in fp64; cast back
    assert 0.0 < float(arrays["0.mlp.weight"].numpy().mean()) <= 1.0


def test_sampling_depends_on_seed_and_round_not_on_node_ids():
    picks = []
    for node_ids in ([5, 9, 2, 7, 3, 8], [61, 12, 33, 48, 90, 77]):
        strategy = make(sampling=Sampling(fraction_train=0.5, seed=3))
        grid = FakeGrid({n: p for p, n in enumerate(node_ids)})
        rounds = []
        for server_round in (1, 2, 3):
            messages = strategy.configure_train(server_round, adapter(), ConfigRecord(), grid)
            rounds.append(sorted(grid.partition_of[m.metadata.dst_node_id] for m in messages))
        picks.append(rounds)
        assert grid.handshakes == len(node_ids)  # each node introduced once
    assert picks[0] == picks[1]
    assert all(len(r) == 3 for r in picks[0])
    assert sample_partitions(6, 3, seed=3, server_round=1) == picks[0][0]


def test_handshake_refuses_failing_or_foreign_emulators():
    strategy = make(offer=EmulatorOffer("/bundle", sha256="a" * 64))
    grid = FakeGrid({1: 0, 2: 1, 3: 2}, sha={1: "a" * 64, 2: "b" * 64}, fail_handshake={3})
    messages = list(strategy.configure_train(1, adapter(), ConfigRecord(), grid))
    assert [m.metadata.dst_node_id for m in messages] == [1]
    assert set(strategy.refused) == {2, 3}


def test_start_runs_rounds_evaluates_on_schedule_and_resumes():
    def client(msg):
        value = msg.content[wire.ARRAYS]["0.mlp.weight"].numpy().mean() + 1.0
        return reply(msg.metadata.dst_node_id, adapter(value), examples=10, loss=2.0)

    def evaluate(server_round, arrays, with_emulator):
        metrics = {wire.PLUG_IN_ACC: 0.5, wire.PLUG_IN_ACC_STDERR: 0.1}
        return {**metrics, wire.EMULATOR_FT_ACC: 0.4} if with_emulator else metrics

    saved = []
    strategy = make(
        "fedadam",
        evaluation=ServerEvaluation(evaluate, emulator_every=0),
        on_round_end=lambda r, a: saved.append(r),
    )
    result = strategy.start(FakeGrid({1: 0, 2: 1}, client=client), adapter(0.0), num_rounds=3)
    assert [r.round for r in saved] == [1, 2, 3]
    assert [r.emulator_ft_acc for r in saved] == [None, None, 0.4]
    assert saved[-1].privacy_gap == pytest.approx(0.1)
    assert saved[0].bytes_per_client == adapter().count_bytes()

    # Resume after round 2 with the saved server-optimiser state: same final adapter.
    first = make("fedadam", evaluation=ServerEvaluation(evaluate))
    two = first.start(FakeGrid({1: 0, 2: 1}, client=client), adapter(0.0), num_rounds=2)
    resumed = make("fedadam", evaluation=ServerEvaluation(evaluate))
    resumed.restore_(first.history, first.state_arrays())
    final = resumed.start(FakeGrid({7: 0, 8: 1}, client=client), two.arrays, num_rounds=1)
    assert [r.round for r in resumed.history] == [1, 2, 3]
    for key in SHAPES:
        np.testing.assert_array_equal(final.arrays[key].numpy(), result.arrays[key].numpy())


def test_strategy_parameters_list_the_base_arguments():
    assert "proximal_mu" in strategy_parameters("fedprox")
    assert "fraction_train" not in strategy_parameters("fedavg")
    with pytest.raises(
        ValueError, match="federation.strategy='fedfoo' is unknown; use one of fedavg, fedprox"
    ):
        strategy_parameters("fedfoo")


def test_plug_in_is_evaluated_on_its_schedule_and_always_in_the_last_round():
    def client(msg):
        return reply(msg.metadata.dst_node_id, adapter(1.0), examples=10, loss=2.0)

    calls = []

    def evaluate(server_round, arrays, with_emulator):
        calls.append((server_round, with_emulator))
        return {wire.PLUG_IN_ACC: 0.5, wire.PLUG_IN_ACC_STDERR: 0.1}

    strategy = make(evaluation=ServerEvaluation(evaluate, emulator_every=2, plug_in_every=0))
    strategy.start(FakeGrid({1: 0, 2: 1}, client=client), adapter(0.0), num_rounds=3)
    assert calls == [(2, True), (3, True)]  # with the emulator's schedule and in the last round only
    assert [r.plug_in_acc for r in strategy.history] == [None, 0.5, 0.5]


def harmonizers(value: float) -> ArrayRecord:
    return ArrayRecord({"3.up.weight": Array(np.full(8, float(value), np.float32))})


def test_realigned_harmonizers_go_with_the_next_rounds_messages_counted_and_checkpointed():
    received = []  # (round, harmonizer value or None) per train message

    def client(msg):
        harmonizers = msg.content.array_records.get(wire.HARMONIZERS)
        value = None if harmonizers is None else float(harmonizers["3.up.weight"].numpy()[0])
        received.append((int(msg.content[wire.CONFIG][wire.SERVER_ROUND]), value))
        return reply(msg.metadata.dst_node_id, adapter(1.0), examples=10, loss=2.0)

    calls = []

    def realign(server_round, arrays):
        calls.append(("realign", server_round))
        return harmonizers(server_round), {"loss_before": 0.5, "loss_after": 0.25, "steps": 2.0}

    def evaluate(server_round, arrays, with_emulator):
        calls.append(("evaluate", server_round))
        return {wire.PLUG_IN_ACC: 0.5, wire.PLUG_IN_ACC_STDERR: 0.1}

    def run(strategy, rounds, grid):
        strategy.start(grid, adapter(0.0), num_rounds=rounds)
        return strategy.history

    records = run(
        make(realign=realign, evaluation=ServerEvaluation(evaluate)), 3, FakeGrid({1: 0, 2: 1}, client)
    )
    assert calls == [(step, r) for r in (1, 2, 3) for step in ("realign", "evaluate")]  # realign first
    assert received == [(1, None)] * 2 + [(2, 1.0)] * 2 + [(3, 2.0)] * 2  # round r sends round r-1's
    harmonizer_bytes = harmonizers(0).count_bytes()  # ArrayRecord bytes, as bytes_sent counts them
    assert [r.harmonizer_bytes for r in records] == [0, harmonizer_bytes, harmonizer_bytes]
    assert records[1].bytes_per_client == records[0].bytes_per_client + harmonizer_bytes
    assert records[1].bytes_sent == records[0].bytes_sent + 2 * harmonizer_bytes
    assert records[0].realign["loss_after"] == 0.25 and records[0].realign["seconds"] >= 0

    # Stopped after round 2 and resumed: round 3 sends what the uninterrupted run sent.
    sent_uninterrupted, received[:] = received[4:], []
    first = make(realign=realign)
    run(first, 2, FakeGrid({1: 0, 2: 1}, client))
    resumed = make(realign=realign)
    resumed.restore_(first.history, first.state_arrays())
    received[:] = []
    resumed.start(FakeGrid({7: 0, 8: 1}, client), adapter(0.0), num_rounds=1)
    assert received == sent_uninterrupted


def test_without_realignment_no_harmonizers_are_sent_or_checkpointed():
    def client(msg):
        assert wire.HARMONIZERS not in msg.content.array_records
        return reply(msg.metadata.dst_node_id, adapter(1.0))

    strategy = make()
    strategy.start(FakeGrid({1: 0, 2: 1}, client), adapter(0.0), num_rounds=2)
    assert all(r.harmonizer_bytes == 0 and r.realign == {} for r in strategy.history)
    assert not any(k.startswith("harmonizers/") for k in strategy.state_arrays())
