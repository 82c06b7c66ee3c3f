"""Differential privacy on the adapters: config checks, Flower's real DP wrappers inside the offsite strategy
(failed rounds, noise sized for the updates averaged, adaptive clipping), the accountant, and whole runs with
DP (on the in-process backend)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import INPROCESS, FakeGrid, assert_same_adapter, sets
from dp_accounting import GaussianDpEvent
from dp_accounting.rdp import RdpAccountant
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from emulator.config import AdapterConfig
from emulator.scaleot.bundle import load_emulator
from simulations.cli import main
from simulations.run_config import load_config
from simulations.server.evaluation import initial_adapter
from simulations.server.outputs import RunState, privacy_line, write_report
from strategies import wire
from strategies.offsite import offsite_strategy
from strategies.privacy import DifferentialPrivacy
from strategies.privacy_config import DPConfig
from strategies.records import RoundRecord, nothing_trained_reason, progress_line
from strategies.settings import EmulatorOffer, ServerEvaluation

ROOT = Path(__file__).resolve().parents[2]
STEPS = 5  # client.local_steps of the fake clients: every reply reports it (DP's unweighted average)
SIZE = 16384  # adapter coordinates: enough to measure the noise's std within about 1 %


@pytest.fixture(autouse=True)
def task_identity():
    # Message() needs the process's task identity (flower-1.42.md §10.8).
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def dp_strategy(clipping: str, num_sampled: int, evaluated: list | None = None, **settings):
    """The offsite FedAvg with Flower's DP wrapper, as ``simulations.server.federation`` builds it."""
    privacy = DifferentialPrivacy(
        DPConfig(clipping=clipping, **settings), num_sampled, num_sampled, weight=(wire.TRAIN_STEPS, STEPS)
    )

    def evaluate(server_round, arrays, with_emulator):
        (evaluated if evaluated is not None else []).append(server_round)
        return {}  # what is scored does not matter here, only whether it is

    return offsite_strategy(
        "fedavg",
        offer=EmulatorOffer("/bundle"),
        privacy=privacy,
        weighted_by_key=wire.TRAIN_STEPS,
        evaluation=ServerEvaluation(evaluate),
    )


def zeros() -> ArrayRecord:
    return ArrayRecord({"0.w": Array(np.zeros(SIZE, np.float32))})


def moved_by(msg: Message, norm: float, steps: int = STEPS) -> Message:
    """A train reply: the global adapter moved by ``norm`` along one coordinate."""
    adapter = msg.content[wire.ARRAYS]["0.w"].numpy().copy()
    adapter[0] += norm
    metrics = MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 1.0, wire.TRAIN_STEPS: steps})
    return Message(
        RecordDict({wire.ARRAYS: ArrayRecord({"0.w": Array(adapter)}), wire.METRICS: metrics}), reply_to=msg
    )


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_a_dp_run_in_which_every_client_fails_has_empty_rounds_with_the_reasons(clipping):
    # Issue 23 §1: Flower's wrapper, outermost, skipped a round with an error reply before the offsite
    # strategy saw it: rounds `empty: false`, `rejections: []`, and the untrained adapter scored.
    evaluated = []
    strategy = dp_strategy(clipping, 2, evaluated, noise_multiplier=1.0)
    failing = FakeGrid(
        {1: 0, 2: 1}, client=lambda m: Message(Error(3, "RuntimeError: fails on purpose"), reply_to=m)
    )
    strategy.start(failing, zeros(), num_rounds=2)
    assert [r.empty for r in strategy.history] == [True, True]
    assert all(len(r.rejections) == 2 and "fails on purpose" in r.rejections[0] for r in strategy.history)
    assert all(r.privacy == {} for r in strategy.history)  # nothing released, no privacy spent
    assert evaluated == []  # the untrained adapter is never scored as a fine-tuned row
    reason = nothing_trained_reason(strategy.history)  # what the run exits 1 with
    assert (
        "most common client failure (4 of 4): client error (code 3): RuntimeError: fails on purpose" in reason
    )


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_noise_is_sized_for_the_updates_averaged_so_epsilon_is_never_understated(clipping, tmp_path):
    # Issue 23 §1: 2 sampled, 1 cut off by the round timeout. Flower sized the noise for 2 (std z·C/2) on an
    # average of 1: an effective multiplier of 0.5 (ε ≈ 10.7) while the record said 4.73.
    z, clip = 1.0, 1.0
    strategy = dp_strategy(clipping, 2, noise_multiplier=z, clipping_norm=clip)
    grid = FakeGrid({1: 0, 2: 1}, client=lambda m: None if m.metadata.dst_node_id == 2 else moved_by(m, 1e-3))
    result = strategy.start(grid, zeros(), num_rounds=1)
    record = strategy.history[0]
    assert (record.sampled, record.aggregated, record.missing) == (2, 1, 1)
    update_z = strategy.privacy.wrapper.noise_multiplier  # z itself (fixed), the update's share (adaptive)
    measured = float(np.std(result.arrays["0.w"].numpy()[1:]))  # coordinate 0 holds the update itself
    assert measured == pytest.approx(update_z * clip / 1, rel=0.03)  # sized for the 1 update averaged
    assert record.privacy["noise_std"] == pytest.approx(update_z * clip / 1)
    # Adaptive clipping noises with the C that clipped this round (its next C is smaller: none was clipped).
    assert record.privacy["clipping_norm"] == clip
    assert (record.privacy["next_clipping_norm"] < clip) == (clipping == "adaptive")
    reference = RdpAccountant()
    reference.compose(GaussianDpEvent(z))
    assert record.privacy["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert "ε 4.73" in progress_line(record, 1)
    write_report(tmp_path, RunState(zero_shot={}, history=strategy.history), title="dp")
    report = (tmp_path / "report.md").read_text()
    assert "Differential privacy: ε = 4.73 at δ = 1e-05 after 1 noised aggregate(s)" in report


def test_a_report_without_noise_says_so_and_does_not_call_its_aggregates_noised():
    clipped = {"epsilon": None, "delta": 1e-5, "noise_multiplier": 0.0, "clipping_norm": 0.01}
    line = privacy_line([RoundRecord(round=r, privacy=clipped) for r in (1, 2)])
    assert line == (
        "Differential privacy: no noise (noise multiplier 0), so ε = ∞ at δ = 1e-05; 2 clipped aggregate(s)."
    )
    assert "noised" not in line


@pytest.mark.parametrize("target, interval", [(0.25, (0.5, 1.0)), (0.5, (1.0, 2.0)), (0.75, (2.0, 4.0))])
@pytest.mark.parametrize("start", [0.01, 100.0])
def test_adaptive_clipping_norm_converges_to_the_target_quantile_from_both_sides(start, target, interval):
    # Andrew et al.: C moves towards the target quantile of the update norms (the fraction left unclipped).
    # Flower 1.42 stepped on the clipped fraction: from 0.1, C shrank to 0.002; from 10 it grew to 546.
    norms = {1: 0.5, 2: 1.0, 3: 2.0, 4: 4.0}  # the quantiles: C in [0.5, 1) leaves 1/4 unclipped, ...
    strategy = dp_strategy(
        "adaptive", 4, noise_multiplier=0.0, clipping_norm=start, target_quantile=target, clip_norm_lr=1.0
    )
    grid = FakeGrid({n: n - 1 for n in norms}, client=lambda m: moved_by(m, norms[m.metadata.dst_node_id]))
    strategy.start(grid, zeros(), num_rounds=30)
    norm = [r.privacy["clipping_norm"] for r in strategy.history]
    assert (norm[1] > norm[0]) == (start < interval[0])  # the first step goes towards the quantile
    low, high = interval
    assert all(low <= c < high for c in norm[-10:]), norm


@pytest.mark.parametrize("num_sampled", [1, 2, 4, 8, 100])
@pytest.mark.parametrize("z", [0.0, 0.3, 1.0, 5.0])
def test_adaptive_clipping_works_with_its_defaults(num_sampled, z):
    # Issue 23 §1: Flower's default σ_b = m/20 is too small for z = 1 with m < 40 clients; the error named
    # clipped_count_stddev, which [privacy] did not have, and came after the model load and zero-shot.
    privacy = DifferentialPrivacy(DPConfig(clipping="adaptive", noise_multiplier=z), num_sampled, 100)
    wrapper = privacy.wrap(FedAvg())
    assert z <= wrapper.noise_multiplier <= 1.16 * z  # the count takes at most 15 % more noise on the update
    # Andrew et al.'s split: the update's and the count's Gaussian mechanisms compose to z.
    if z > 0:
        total = (wrapper.noise_multiplier**-2 + (2 * wrapper.clipped_count_stddev) ** -2) ** -0.5
        assert total == pytest.approx(z)


def test_a_count_stddev_too_small_for_the_noise_is_refused_before_any_model_loads():
    overrides = [
        "privacy.clipping='adaptive'",
        "privacy.noise_multiplier=1.0",
        "privacy.clipped_count_stddev=0.2",
    ]
    with pytest.raises(ValueError) as error:
        load_config(ROOT / "simulations/configs/tiny.toml", overrides)
    assert str(error.value) == (
        "config privacy.clipped_count_stddev=0.2 is invalid; it must be > noise_multiplier / 2 = 0.5, "
        "or 0 (automatic)"
    )
    explicit = load_config(
        ROOT / "simulations/configs/tiny.toml", [*overrides[:2], "privacy.clipped_count_stddev=2"]
    )
    assert DifferentialPrivacy(explicit.privacy, 4, 4).wrap(FedAvg()).clipped_count_stddev == 2.0


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm", "fedmedian", "krum"])
def test_dp_with_a_strategy_that_does_not_average_is_refused_before_any_model_loads(strategy):
    # The wrapper noises what the strategy returns with the sensitivity of an average; a median, Krum's pick
    # or a server optimiser's step from un-noised state would make ε an understatement.
    with pytest.raises(
        ValueError, match=f"federation.strategy='{strategy}' is invalid; it must be one of fedavg"
    ):
        load_config(
            ROOT / "simulations/configs/tiny.toml",
            ["privacy.clipping='fixed'", f"federation.strategy={strategy}"],
        )


def test_under_dp_a_reply_with_another_weight_or_no_update_is_dropped_with_its_reason():
    # A client's reported weight would make the average weighted (its update worth more than C / k), and an
    # update of norm 0 made Flower's clipping divide by zero (ZeroDivisionError ended the run).
    replies = {
        1: lambda m: moved_by(m, 0.5),
        2: lambda m: moved_by(m, 0.5, steps=1000),
        3: lambda m: moved_by(m, 0.0),
    }
    strategy = dp_strategy("fixed", 3, noise_multiplier=0.0, clipping_norm=1.0)
    strategy.start(
        FakeGrid({n: n - 1 for n in replies}, client=lambda m: replies[m.metadata.dst_node_id](m)), zeros(), 1
    )
    record = strategy.history[0]
    assert record.aggregated == 1
    assert sorted(record.rejections) == [
        "node 2: reports train_steps=1000; under DP every reply must report 5",
        "node 3: adapter unchanged from the global one (an update of norm 0: DP clipping cannot scale it)",
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("clipping", "client"),
        ("noise_multiplier", -1.0),
        ("clipping_norm", 0.0),
        ("delta", 1.0),
        ("clipped_count_stddev", -1.0),
    ],
)
def test_bad_privacy_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"privacy.{field}"):
        DPConfig(**{field: value})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"noise_multiplier": 0.5},
            "config privacy.noise_multiplier=0.5 has no effect with privacy.clipping='off'; set "
            "privacy.clipping to 'fixed' or 'adaptive' or leave it out",
        ),
        (
            {"clipping": "fixed", "target_quantile": 0.8},
            "config privacy.target_quantile=0.8 has no effect with privacy.clipping='fixed'; set "
            "privacy.clipping to 'adaptive' or leave it out",
        ),
    ],
)
def test_a_privacy_setting_the_chosen_clipping_ignores_is_refused(settings, message):
    # Noise set while clipping is off would run without DP, and its user would believe it ran with it.
    with pytest.raises(ValueError) as error:
        DPConfig(**settings)
    assert str(error.value) == message
    DPConfig(clipping="adaptive", **{k: v for k, v in settings.items() if k != "clipping"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["privacy.noise_multiplier=1"],
            "config privacy.noise_multiplier=1.0 has no effect with privacy.clipping='off'; set "
            "privacy.clipping to 'fixed' or 'adaptive' or leave it out",
        ),
        (
            ["privacy.clipping='off'", "privacy.delta=1e-5"],
            "config privacy.delta=1e-05 has no effect with privacy.clipping='off'",
        ),
        (
            ["privacy.clipping='fixed'", "privacy.target_quantile=0.5"],
            "config privacy.target_quantile=0.5 has no effect with privacy.clipping='fixed'; set "
            "privacy.clipping to 'adaptive' or leave it out",
        ),
    ],
)
def test_a_privacy_setting_given_at_its_default_that_the_clipping_ignores_is_refused(overrides, message):
    # noise_multiplier=1 is the default: compared by value it passed, and the run went on without DP.
    with pytest.raises(ValueError) as error:
        load_config(ROOT / "simulations/configs/tiny.toml", overrides)
    assert str(error.value).startswith(message)
    assert DPConfig() == DPConfig(clipping="off")  # in code, the defaults still build


def test_a_dp_config_is_written_with_what_its_clipping_reads_and_reads_back(tmp_path):
    for clipping, left_out in (("off", {"noise_multiplier", "delta"}), ("fixed", {"target_quantile"})):
        config = load_config(ROOT / "simulations/configs/tiny.toml", [f"privacy.clipping='{clipping}'"])
        written = config.to_dict()["privacy"]
        assert written["clipping"] == clipping and not left_out & set(written)
        (tmp_path / "config.toml").write_text(config.to_toml())
        assert load_config(tmp_path / "config.toml") == config


def test_a_run_directory_written_with_every_privacy_setting_still_reads(tmp_path):
    # config.toml of runs from before: every [privacy] key, each at its default, under clipping 'off'.
    old = ROOT.joinpath("simulations/configs/tiny.toml").read_text() + (
        '\n[privacy]\nclipping = "off"\nnoise_multiplier = 1.0\nclipping_norm = 0.1\ntarget_quantile = 0.5\n'
        "clip_norm_lr = 0.2\nclipped_count_stddev = 0.0\ndelta = 1e-5\n"
    )
    (tmp_path / "config.toml").write_text(old)
    assert load_config(tmp_path / "config.toml").privacy == DPConfig()
    with pytest.raises(ValueError, match="privacy.noise_multiplier=1.0 has no effect"):  # given by the user
        load_config(tmp_path / "config.toml", ["privacy.noise_multiplier=1"])


def test_privacy_needs_fixed_local_steps():
    with pytest.raises(ValueError, match="client.local_steps=0"):
        overrides = ["privacy.clipping='fixed'", "client.local_steps=0"]
        load_config(ROOT / "simulations/configs/tiny.toml", overrides)


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_epsilon_and_clipping_norm_survive_a_resume(clipping):
    """ε is the RDP accountant's over every release; a resumed run continues its ε, its adaptive C and its
    noise (seeded by (seed, round)), so it ends with the adapter an uninterrupted run ends with."""

    def client(msg):
        return moved_by(msg, {1: 0.05, 2: 0.2}[msg.metadata.dst_node_id])

    def run(strategy, arrays, rounds):
        return strategy.start(FakeGrid({1: 0, 2: 1}, client=client), arrays, num_rounds=rounds).arrays

    settings = {"noise_multiplier": 1.2, "clipping_norm": 0.1}
    whole = dp_strategy(clipping, 2, **settings)
    final = run(whole, zeros(), 3)
    epsilons = [r.privacy["epsilon"] for r in whole.history]
    reference = RdpAccountant()  # Google's dp-accounting directly: 3 Gaussian releases, no amplification
    reference.compose(GaussianDpEvent(1.2), 3)
    assert epsilons[0] < epsilons[1] < epsilons[2] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)

    first = dp_strategy(clipping, 2, **settings)
    two = run(first, zeros(), 2)
    resumed = dp_strategy(clipping, 2, **settings)
    resumed.restore_(first.history, first.state_arrays())
    last = run(resumed, two, 1)
    assert resumed.history[-1].privacy == whole.history[-1].privacy
    np.testing.assert_array_equal(last["0.w"].numpy(), final["0.w"].numpy())


def test_without_noise_epsilon_is_unbounded():
    strategy = dp_strategy("fixed", 2, noise_multiplier=0.0)
    strategy.start(FakeGrid({1: 0, 2: 1}, client=lambda m: moved_by(m, 0.5)), zeros(), num_rounds=1)
    assert strategy.history[0].privacy["epsilon"] is None


def test_each_rounds_noise_depends_only_on_seed_and_round():
    """A resumed run (a fresh process at round 2) adds the same noise as the uninterrupted run did."""
    from flwr.supercore.differential_privacy import add_gaussian_noise_inplace

    dp = DifferentialPrivacy(DPConfig(clipping="fixed", noise_multiplier=1.0), num_sampled=2, population=4)

    def noise(server_round: int) -> np.ndarray:
        dp.seed_round_(7, server_round)
        arrays = [np.zeros(64, dtype=np.float32)]
        add_gaussian_noise_inplace(arrays, 1.0)  # what Flower's DP wrappers call on the aggregate
        return arrays[0]

    uninterrupted = [noise(1), noise(2)]
    np.random.seed(12345)  # whatever the process drew before
    assert np.array_equal(noise(2), uninterrupted[1])
    assert not np.array_equal(uninterrupted[0], uninterrupted[1])
    dp.seed_round_(8, 2)
    assert not np.array_equal(np.random.normal(0, 1.0, 64).astype(np.float32), uninterrupted[1])


@pytest.mark.slow
@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_a_dp_run_in_which_every_client_fails_exits_1_with_the_reason(clipping, tmp_path, capsys):
    # Issue 23 §1, its own input (adaptive at its own defaults, which failed after the model load before).
    overrides = [
        "model=tiny-qwen2",
        f"privacy.clipping={clipping}",
        "privacy.noise_multiplier=1.0",
        "federation.fail_partitions=[0,1,2,3]",
    ]
    args = ["simulate", "--config", "simulations/configs/tiny.toml", "--out", str(tmp_path)]
    assert main([*args, *INPROCESS, *sets(*overrides)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: no client reply was aggregated in any of the 2 round(s)"), last
    assert "fails on purpose" in last
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and set(metrics["results"]) == {"full_zs", "emulator_zs"}
    assert all(
        r["empty"] and len(r["rejections"]) == r["sampled"] == 2 and not r["privacy"]
        for r in metrics["rounds"]
    )


@pytest.mark.slow
def test_dp_simulation_noises_the_adapter_and_reports_growing_epsilon(tmp_path, caplog):
    """tiny.toml, 3 rounds, clipping norm C = 1e-3: the clipped average moves the adapter by at most C a
    round, so a larger move is the noise; its size must match Flower's std z·C/m over every coordinate."""
    z, clip = 1.0, 1e-3
    overrides = [
        "federation.rounds=3",
        "privacy.clipping='fixed'",
        f"privacy.noise_multiplier={z}",
        f"privacy.clipping_norm={clip}",
        "evaluation.plug_in_every=0",
        "evaluation.emulator_every=0",
    ]
    args = ["simulate", "--config", "simulations/configs/tiny.toml", "--out", str(tmp_path)]
    with caplog.at_level(logging.INFO):
        assert main([*args, *INPROCESS, *sets(*overrides)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    epsilons = [r["privacy"]["epsilon"] for r in rounds]
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2]
    assert "ε" in caplog.text

    sampled = rounds[0]["sampled"]
    assert all(r["privacy"]["noise_std"] == pytest.approx(z * clip / sampled) for r in rounds)
    emulator, _ = load_emulator(metrics["bundle"]["path"])
    start = initial_adapter(emulator.model, emulator.adapter_positions(), AdapterConfig(mode="full"), 0)
    final = load_file(str(tmp_path / "adapter.safetensors"))
    moved = torch.sqrt(sum(((final[k] - start[k].float()) ** 2).sum() for k in start)).item()
    coordinates = sum(t.numel() for t in start.values())
    expected_noise = z * clip / sampled * math.sqrt(3 * coordinates)
    assert moved > 3 * clip
    assert moved == pytest.approx(expected_noise, rel=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_a_dp_run_stopped_after_round_one_resumes_to_the_same_adapter_and_epsilon(clipping, tmp_path):
    # The resumed adapter is read back from a safetensors file (keys sorted); Flower's clipping pairs it
    # with each reply by position, so a resume used to subtract unrelated tensors and fail.
    overrides = [
        f"privacy.clipping={clipping}",
        "privacy.noise_multiplier=1.0",
        "output.export_plug_in=false",
    ]
    args = ["simulate", "--config", "simulations/configs/tiny.toml", *INPROCESS, *sets(*overrides)]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main([*args, "--out", str(whole)]) == 0
    assert main([*args, *sets("federation.rounds=1"), "--out", str(stopped)]) == 0
    assert main(["simulate", "--resume", str(stopped), *sets("federation.rounds=2")]) == 0
    records = [json.loads((d / "metrics.json").read_text())["rounds"] for d in (whole, stopped)]
    assert [r["privacy"] for r in records[0]] == [r["privacy"] for r in records[1]]
    assert_same_adapter(stopped, whole)
