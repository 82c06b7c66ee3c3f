"""EmulatorConfig: defaults, validation messages, combination checks, dict round trip."""

from __future__ import annotations

import re

import pytest

from emulator.config import EmulatorConfig
from emulator.config_parse import Spelled, parse_value
from emulator.methods import METHODS


def test_defaults_are_valid_and_round_trip():
    config = EmulatorConfig()
    assert config.method == "scaleot" and config.alpha == 0.25 and config.src.rank_keep == 1.0
    # β < 1 alone gives the SRC form measured to keep plug-in (issue 9): q and k, by spectral energy.
    assert (config.src.src_rank, config.src.src_projections) == ("energy", "qk")
    assert (config.stage1.train_replace_ratio, config.stage1.stage1_steps) == (0.5, 60)
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
        (
            {"corpus": "wiki"},
            "emulator.corpus='wiki' is not allowed; use one of 'wikipedia', 'wikitext', 'pydoc'",
        ),
        ({"harmonizer_loss": "kl+kl"}, "emulator.harmonizer_loss='kl\\+kl' is not allowed"),
        ({"train_replace_ratio": 1.5}, r"emulator.train_replace_ratio=1.5 is out of range; allowed: \[0, 1"),
        ({"src_projections": "qx"}, "emulator.src_projections='qx' must be a non-empty subset of 'qkvo'"),
        ({"src_rank": "spectral"}, "emulator.src_rank='spectral' is not allowed"),
        ({"src_share": 0.0}, r"emulator.src_share=0.0 is out of range; allowed: \(0, 1\]"),
    ],
)
def test_field_errors_name_field_value_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmulatorConfig.of(**kwargs)


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
        ({"method": "full"}, "emulator.method='full' compresses nothing, but alpha=0.25 asks for"),
        # The converse: a compressing method at alpha 0 without SRC is the full model under another name.
        *(
            (
                {"method": name, "alpha": 0.0, "rank_keep": 1.0},
                re.escape(
                    f"emulator.method={name!r} compresses, but alpha=0.0 and rank_keep=1.0 ask for no "
                    "compression (the emulator would be the full model); use alpha > 0 or rank_keep < 1, or "
                    "method='full'"
                ),
            )
            for name, spec in METHODS.items()
            if spec.compresses
        ),
        (
            {"method": "importance-drop", "selection": "uniform"},
            "emulator.selection='uniform' places harmonizers, which method='importance-drop' has not",
        ),
    ],
)
def test_combination_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmulatorConfig.of(**kwargs)


def test_full_preset():
    config = EmulatorConfig.full(seed=3)
    assert (config.method, config.alpha, config.src.rank_keep, config.data.seed) == ("full", 0.0, 1.0, 3)


def test_from_dict_reads_dashes_and_ints_for_floats():
    config = EmulatorConfig.from_dict({"rank-keep": 1, "alpha": 1, "stage1-steps": 5})
    rank_keep = config.src.rank_keep
    assert rank_keep == 1.0 and isinstance(rank_keep, float) and config.stage1.stage1_steps == 5
    assert config.alpha == 1.0 and isinstance(config.alpha, float)


def test_from_dict_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown config key 'emulator.rank' in \[emulator\]; valid keys: method, adapter_bottom",
    ):
        EmulatorConfig.from_dict({"rank": 0.5})


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("alpha", "half", "a number"),
        ("stage1_steps", True, "an integer"),
        ("stage1_steps", 2.5, "an integer"),
        ("method", 3, "a string"),
        ("src_only_smaller", Spelled("maybe"), "true or false (also 1 / 0, yes / no)"),
        ("src_only_smaller", "false", "true or false, not a string: remove the quotes"),
    ],
)
def test_from_dict_rejects_wrong_types(key, value, allowed):
    with pytest.raises(ValueError, match=f"^config emulator.{key}={value!r} must be {re.escape(allowed)}"):
        EmulatorConfig.from_dict({key: value})


def test_from_dict_reads_values_spelled_as_strings_by_the_declared_type():
    # Issue 23 §3: values from outside (Flower's run config, a command line) may be strings: parse_value
    # marks them Spelled. A plain string is a TOML file's "0.5", refused where a number is meant.
    values = {key: parse_value(f"'{raw}'") for key, raw in (("alpha", "0.5"), ("stage1_steps", "7"))}
    config = EmulatorConfig.from_dict(values | {"src_only_smaller": parse_value("no")})  # a bare word
    assert (config.alpha, config.stage1.stage1_steps, config.src.src_only_smaller) == (0.5, 7, False)
    assert EmulatorConfig.from_dict({"src_only_smaller": parse_value("yes")}).src.src_only_smaller is True
    with pytest.raises(
        ValueError, match=r"^config emulator.stage1_steps='7' must be an integer, not a string"
    ):
        EmulatorConfig.from_dict({"stage1_steps": "7"})


def test_flat_and_nested_keys_build_the_same_config():
    # TOML [emulator] written flat (as every config file does) and by section ([emulator.stage1]) agree.
    flat = EmulatorConfig.from_dict({"harmonizer-rank": 16, "rank_keep": 0.5, "seq_len": 32})
    nested = EmulatorConfig.from_dict(
        {"stage1": {"harmonizer_rank": 16}, "src": {"rank-keep": 0.5}, "data": {"seq_len": 32}}
    )
    assert flat == nested == EmulatorConfig.of(harmonizer_rank=16, rank_keep=0.5, seq_len=32)
    assert (flat.stage1.harmonizer_rank, flat.src.rank_keep, flat.data.seq_len) == (16, 0.5, 32)
    assert EmulatorConfig.from_dict(flat.to_dict()) == flat and "stage1" not in flat.to_dict()


def test_a_key_given_flat_and_in_its_section_is_an_error():
    with pytest.raises(ValueError, match=r"config emulator.stage1_steps is given twice: flat and in"):
        EmulatorConfig.from_dict({"stage1_steps": 3, "stage1": {"stage1_steps": 4}})


def test_a_nested_key_in_the_wrong_section_is_unknown():
    with pytest.raises(
        ValueError, match=r"unknown config key 'emulator.stage1.rank_keep' in \[emulator.stage1\]"
    ):
        EmulatorConfig.from_dict({"stage1": {"rank_keep": 0.5}})


def test_every_flat_key_has_one_home():
    # Field names are unique across the top level and the sections: a flat key can only mean one field.
    from dataclasses import fields, is_dataclass

    names = [f.name for f in fields(EmulatorConfig) if not is_dataclass(getattr(EmulatorConfig(), f.name))]
    for f in fields(EmulatorConfig):
        section = getattr(EmulatorConfig(), f.name)
        names += [g.name for g in fields(section)] if is_dataclass(section) else []
    assert len(names) == len(set(names)) and set(names) == set(EmulatorConfig().to_dict())


@pytest.mark.parametrize(
    ("base", "unused", "used"),
    [
        (
            {"method": "scaleot"},
            {"distill_steps": 7, "distill_lr": 1e-3, "log_every": 3},
            {"stage1_steps": 7},
        ),
        ({"method": "scaleot"}, {"log_every": 1}, {"seq_len": 64}),
        ({"method": "scaleot", "rank_keep": 0.8}, {"distill_lm_weight": 1.0}, {"src_share": 0.5}),  # SRC on
        (
            {"method": "scaleot", "rank_keep": 1.0},
            {"src_share": 0.5, "src_rank": "fraction"},
            {"rank_keep": 0.5},
        ),
        ({"method": "importance-drop", "rank_keep": 1.0}, {"distill_lm_weight": 1.0}, {"policy_lr": 0.5}),
        (
            {"method": "uniform", "rank_keep": 1.0},
            {"stage1_steps": 7, "distill_steps": 7, "corpus": "pydoc", "seed": 5},
            {"alpha": 0.5},
        ),
        ({"method": "uniform", "rank_keep": 1.0}, {"src_rank": "fraction"}, {"rank_keep": 0.9}),
        ({"method": "uniform+distill", "rank_keep": 1.0}, {"stage1_steps": 7}, {"distill_steps": 7}),
        ({"method": "uniform+distill", "rank_keep": 1.0}, {"harmonizer_loss": "kl"}, {"batch_size": 2}),
        (
            METHODS["full"].preset,
            {"stage1_steps": 7, "seq_len": 64, "src_rank": "energy"},
            {"adapter_top": 1},
        ),
    ],
)
def test_cache_key_is_the_sections_the_method_uses(base, unused, used):
    # The bundle cache keys on build_dict: a knob the method never reads must not rebuild the emulator, a
    # knob it reads must.
    config = EmulatorConfig.of(**base)
    assert config.updated(**unused).build_dict() == config.build_dict()
    assert config.updated(**used).build_dict() != config.build_dict()


def test_selection_is_keyed_only_when_set():
    # Bundles built before the field existed keep their keys; the ablation gets its own.
    assert "selection" not in EmulatorConfig().build_dict()
    assert EmulatorConfig.of(selection="uniform").build_dict()["selection"] == "uniform"
    with pytest.raises(ValueError, match="emulator.selection='random' is not allowed"):
        EmulatorConfig.of(selection="random")


def test_cache_key_sections_follow_the_method():
    assert EmulatorConfig.of(method="uniform", rank_keep=1.0).sections_used() == ()
    assert EmulatorConfig.of(method="uniform", rank_keep=0.5).sections_used() == ("src",)
    assert EmulatorConfig().sections_used() == ("data", "stage1")  # SRC off by default
    assert EmulatorConfig.of(rank_keep=0.5).sections_used() == ("data", "stage1", "src")
    top = {"method", "adapter_bottom", "adapter_top", "alpha"}
    assert set(EmulatorConfig.of(rank_keep=0.5).build_dict()) == top | {
        "data",
        "stage1",
        "src",
    }
