"""EmulatorConfig: defaults, validation messages, combination checks, dict round trip."""

from __future__ import annotations

import pytest

from emulator.config import EmulatorConfig


def test_defaults_are_valid_and_round_trip():
    config = EmulatorConfig()
    assert config.method == "scaleot" and config.alpha == 0.25 and config.rank_keep == 0.8
    assert EmulatorConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "drop"}, "emulator.method='drop' is not allowed; use one of 'scaleot', 'uniform'"),
        ({"alpha": 1.5}, r"emulator.alpha=1.5 is out of range; allowed: \[0, 1\]"),
        ({"rank_keep": 0.0}, r"emulator.rank_keep=0.0 is out of range; allowed: \(0, 1\]"),
        ({"group_size": 0}, "emulator.group_size=0 must be an integer >= 1"),
        ({"policy_candidates": 1}, "emulator.policy_candidates=1 must be an integer >= 2"),
        ({"harmonizer_loss": "lm+mse"}, "emulator.harmonizer_loss='lm\\+mse' is not allowed"),
        ({"local_norm": "batch"}, "emulator.local_norm='batch' is not allowed"),
        ({"harmonizer_lr": 0.0}, r"emulator.harmonizer_lr=0.0 is out of range; allowed: > 0"),
        ({"seq_len": 1}, "emulator.seq_len=1 must be an integer >= 2"),
        ({"stage1_steps": 2.5}, "emulator.stage1_steps=2.5 must be an integer >= 0"),
        ({"corpus": ""}, "emulator.corpus='' must be a non-empty corpus name"),
        ({"harmonizer_loss": "kl+kl"}, "emulator.harmonizer_loss='kl\\+kl' is not allowed"),
        ({"train_replace_ratio": 1.5}, r"emulator.train_replace_ratio=1.5 is out of range; allowed: \[0, 1"),
        ({"src_projections": "qx"}, "emulator.src_projections='qx' must be a non-empty subset of 'qkvo'"),
        ({"src_rank": "spectral"}, "emulator.src_rank='spectral' is not allowed"),
        ({"src_share": 0.0}, r"emulator.src_share=0.0 is out of range; allowed: \(0, 1\]"),
    ],
)
def test_field_errors_name_field_value_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"harmonizer_loss": "lm+local", "local_weight": 0.0},
            "emulator.local_weight=0 with harmonizer_loss='lm\\+local' switches the local term off",
        ),
        (
            {"harmonizer_loss": "hidden+kl", "kl_weight": 0.0},
            "emulator.kl_weight=0 with harmonizer_loss='hidden\\+kl' switches the kl term off",
        ),
        (
            {"method": "uniform", "src_layers": "least-important"},
            "emulator.src_layers='least-important' needs stage-1 scores",
        ),
        (
            {"method": "uniform+distill", "distill_steps": 0},
            "emulator.distill_steps=0 with method='uniform\\+distill'",
        ),
        ({"method": "full"}, "emulator.method='full' compresses nothing, but alpha=0.25 and rank_keep=0.8"),
    ],
)
def test_combination_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(**kwargs)


def test_full_preset():
    config = EmulatorConfig.full(seed=3)
    assert (config.method, config.alpha, config.rank_keep, config.seed) == ("full", 0.0, 1.0, 3)


def test_from_dict_reads_dashes_and_ints_for_floats():
    config = EmulatorConfig.from_dict({"rank-keep": 1, "alpha": 0, "stage1-steps": 5})
    assert config.rank_keep == 1.0 and isinstance(config.rank_keep, float) and config.stage1_steps == 5


def test_from_dict_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown config key 'emulator.rank' in \[emulator\]; valid keys: method, adapter_bottom",
    ):
        EmulatorConfig.from_dict({"rank": 0.5})


@pytest.mark.parametrize(("key", "value"), [("alpha", "0.5"), ("stage1_steps", True), ("method", 3)])
def test_from_dict_rejects_wrong_types(key, value):
    with pytest.raises(ValueError, match=f"config emulator.{key}=.* must be a"):
        EmulatorConfig.from_dict({key: value})


def test_build_dict_ignores_knobs_the_method_does_not_use():
    # A bundle cache keyed on build_dict must not rebuild a ScaleOT emulator when only distillation changed,
    # and must rebuild it when stage 1 changed.
    base = EmulatorConfig(method="scaleot")
    assert EmulatorConfig(method="scaleot", distill_steps=7, log_every=3).build_dict() == base.build_dict()
    assert EmulatorConfig(method="scaleot", stage1_steps=7).build_dict() != base.build_dict()
    uniform = EmulatorConfig(method="uniform")
    assert (
        EmulatorConfig(method="uniform", stage1_steps=7, distill_steps=7).build_dict() == uniform.build_dict()
    )
    assert EmulatorConfig(method="uniform", alpha=0.5).build_dict() != uniform.build_dict()
    distill = EmulatorConfig(method="uniform+distill")
    assert EmulatorConfig(method="uniform+distill", distill_steps=7).build_dict() != distill.build_dict()
