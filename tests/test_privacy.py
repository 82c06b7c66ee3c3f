"""Differential privacy on the adapters: config checks, the accountant, and a real Ray simulation with DP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import scaleot
from dp_accounting import GaussianDpEvent
from dp_accounting.rdp import RdpAccountant
from safetensors.torch import load_file

from emulator.bundle import load_emulator
from emulator.config import AdapterConfig
from simulations.config import load_config
from simulations.server_eval import initial_adapter
from strategies.privacy import DifferentialPrivacy
from strategies.privacy_config import DPConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("field", "value"),
    [("clipping", "client"), ("noise_multiplier", -1.0), ("clipping_norm", 0.0), ("delta", 1.0)],
)
def test_bad_privacy_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"privacy.{field}"):
        DPConfig(**{field: value})


def test_privacy_needs_fixed_local_steps():
    with pytest.raises(ValueError, match="client.local_steps=0"):
        overrides = ["privacy.clipping='fixed'", "client.local_steps=0"]
        load_config(ROOT / "simulations/configs/tiny.toml", overrides)


def test_epsilon_is_the_rdp_accountants_and_survives_a_resume():
    config = DPConfig(clipping="fixed", noise_multiplier=1.2, clipping_norm=0.5, delta=1e-5)
    dp = DifferentialPrivacy(config, num_sampled=4, population=8)
    spent = [dp.release() for _ in range(3)]
    epsilons = [s["epsilon"] for s in spent]
    assert epsilons[0] < epsilons[1] < epsilons[2]
    reference = RdpAccountant()  # Google's dp-accounting directly: 3 Gaussian releases, no amplification
    reference.compose(GaussianDpEvent(1.2), 3)
    assert epsilons[2] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert spent[0]["noise_std"] == pytest.approx(1.2 * 0.5 / 4)

    resumed = DifferentialPrivacy(config, num_sampled=4, population=8)
    resumed.restore_(spent[:2])
    assert resumed.release()["epsilon"] == pytest.approx(epsilons[2], rel=1e-12)


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


def test_without_noise_epsilon_is_unbounded():
    dp = DifferentialPrivacy(DPConfig(clipping="fixed", noise_multiplier=0.0), num_sampled=2, population=4)
    assert dp.release()["epsilon"] is None


def test_dp_simulation_noises_the_adapter_and_reports_growing_epsilon(tmp_path):
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
    for item in overrides:
        args += ["--set", item]
    result = scaleot(*args)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    epsilons = [r["privacy"]["epsilon"] for r in rounds]
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2]
    assert "ε" in result.stderr

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
