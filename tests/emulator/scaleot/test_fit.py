"""Settings that must fit the loaded model fail early, in one line naming the field, value and limit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import TINY, tiny

from emulator.data.tasks import load_task
from emulator.lm.architectures import position_limit
from emulator.scaleot.fit import check_fits
from simulations.run_config import load_config
from simulations.server.federation import check_partition, run_federation

TINY_TOML = Path(__file__).resolve().parents[3] / "simulations" / "configs" / "tiny.toml"


def test_max_length_beyond_gpt2_positions_fails_before_any_round_or_build(tmp_path, monkeypatch):
    # The input: client.max_length=1024 on tiny-gpt2 (512 learned positions).
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    config = load_config(TINY_TOML, ["model=tiny-gpt2", "client.max_length=1024"])
    with pytest.raises(ValueError) as error:
        run_federation(None, config, tmp_path / "run")  # a grid is never reached: no round starts
    message = str(error.value)
    assert "\n" not in message
    assert "client.max_length=1024" in message and "<= 512" in message and "position limit" in message
    assert not (tmp_path / "cache" / "bundles").exists()  # no emulator was built either


@pytest.mark.parametrize(
    ("model", "overrides", "field", "limit"),
    [
        ("tiny-gpt2", ["evaluation.max_length=513"], "evaluation.max_length=513", "<= 512"),
        ("tiny-llama", ["emulator.seq_len=600"], "emulator.seq_len=600", "<= 512"),
        # importance-drop runs stage 1 on seq_len blocks too (it went unchecked before the method registry).
        (
            "tiny-llama",
            ["emulator.method='importance-drop'", "emulator.seq_len=600"],
            "seq_len=600",
            "<= 512",
        ),
        ("tiny-opt", ["emulator.adapter_bottom=4", "emulator.adapter_top=4"], "adapter_top=8", "< 8"),
        ("tiny-llama", ["emulator.harmonizer_rank=65"], "emulator.harmonizer_rank=65", "<= 64"),
        ("tiny-qwen2", ["emulator.group_size=5"], "emulator.group_size=5", "<= 4"),
        ("tiny-llama", ["emulator.alpha=0.1"], "emulator.alpha=0.1", "groups of [4]"),
        # 0.125 of 4 middle blocks rounds up to one: a quarter, not the share asked for.
        ("tiny-llama", ["emulator.alpha=0.125", "emulator.replace_scope='global'"], "alpha=0.125", "1 of 4"),
        ("tiny-llama", ["emulator.method='importance-drop'", "emulator.alpha=0.1"], "alpha=0.1", "groups of"),
        ("tiny-gpt2", ["adapter.mode='lora'", "adapter.lora_rank=128"], "adapter.lora_rank=128", "<= 64"),
    ],
)
def test_each_setting_is_checked_against_the_model(model, overrides, field, limit):
    config = load_config(TINY_TOML, [f"model={model}", *overrides])
    with pytest.raises(ValueError) as error:
        check_fits(
            tiny(model)[0],
            config.emulator,
            config.adapter,
            {
                "client.max_length": config.client.max_length,
                "evaluation.max_length": config.evaluation.max_length,
            },
        )
    assert field in str(error.value) and limit in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("model", TINY)
def test_the_smoke_config_fits_every_tiny_model(model):
    config = load_config(TINY_TOML, [f"model={model}"])
    check_fits(tiny(model)[0], config.emulator, config.adapter, {"client.max_length": 512})
    assert position_limit(tiny(model)[0]) == 512


def test_the_alpha_check_allows_src_only_and_global_scope():
    model = tiny("tiny-llama")[0]
    for overrides in (["emulator.alpha=0.0"], ["emulator.alpha=0.2", "emulator.replace_scope='global'"]):
        check_fits(model, load_config(TINY_TOML, overrides).emulator)  # 0: SRC only; 0.2 of 4 rounds to 1
    with pytest.raises(ValueError, match=r"emulator.group_size=8"):
        check_fits(model, load_config(TINY_TOML, ["emulator.group_size=8"]).emulator)
    check_fits(
        model, load_config(TINY_TOML, ["emulator.group_size=8", "emulator.replace_scope='global'"]).emulator
    )


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tokenizer):
    grown = copy.deepcopy(tokenizer)
    grown.add_tokens(["<extra-token>"])
    with pytest.raises(ValueError, match=r"model's tokenizer size=49153 .* <= 49152 embedding rows"):
        check_fits(tiny("tiny-gpt2")[0], tokenizer=grown)
    check_fits(tiny("tiny-gpt2")[0], tokenizer=tokenizer)


def test_a_split_the_clients_cannot_hold_fails_before_any_round():
    config = load_config(TINY_TOML, ["federation.num_clients=64", "federation.min_clients=1"])
    train = load_task(config.task, seed=config.seed).train
    check_partition(config, train)  # 64 iid shards of the synthetic task are fine
    with pytest.raises(ValueError, match=r"federation.num_clients=64, partition='iid' cannot split the 10 "):
        check_partition(config, train[:10])
    dirichlet = load_config(
        TINY_TOML,
        ["federation.partition='dirichlet'", "federation.dirichlet_alpha=0.01", "federation.num_clients=8"],
    )
    with pytest.raises(ValueError, match=r"gave a client fewer than min_partition_size"):
        check_partition(dirichlet, train[:40])
