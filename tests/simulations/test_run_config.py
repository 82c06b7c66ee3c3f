"""The run config: TOML + overrides, unknown keys rejected with the valid ones, Flower run config, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.run_config import (
    FederationConfig,
    RunConfig,
    check_resumable,
    from_flower_run_config,
    load_config,
    resume_config,
)
from simulations.runner import backend_config

ROOT = Path(__file__).resolve().parents[2]
# Run configs; compare-*.toml are compare files (a run config plus [compare] and [quick]: test_compare.py).
CONFIGS = sorted(
    p for p in (ROOT / "simulations" / "configs").glob("*.toml") if not p.name.startswith("compare-")
)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_parse_and_round_trip(path, tmp_path):
    config = load_config(path)
    (tmp_path / "resolved.toml").write_text(config.to_toml())
    assert load_config(tmp_path / "resolved.toml") == config


def test_overrides_reach_every_section():
    config = load_config(
        ROOT / "simulations/configs/tiny.toml",
        [
            "federation.rounds=5",
            "emulator.rank-keep=0.5",
            "federation.strategy=fedprox",
            "federation.strategy_kwargs.proximal_mu=0.01",
            "client.lr=3e-4",
            "federation.fail_partitions=[1, 2]",
            "simulation.ray_address=auto",
        ],
    )
    assert config.federation.rounds == 5 and config.emulator.src.rank_keep == 0.5
    assert config.federation.strategy_kwargs == {"proximal_mu": 0.01}
    assert config.client.lr == 3e-4 and config.federation.fail_partitions == (1, 2)
    assert config.simulation.ray_address == "auto"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "federation.rouns=3",
            "unknown config key 'federation.rouns' in [federation]; valid keys: num_clients",
        ),
        ("bogus=1", "unknown config key 'bogus' in the top level; valid keys: name, model, task"),
        ("emulator.alpah=0.1", "unknown config key 'emulator.alpah' in [emulator]; valid keys: method"),
        ("federation.strategy=fedfoo", "federation.strategy='fedfoo' is unknown; use one of fedavg"),
        ("federation.strategy_kwargs.eta=0.1", "it must be arguments of fedavg: (it takes none)"),
        ("federation.fraction=0", "config federation.fraction=0.0 is invalid; it must be in (0, 1]"),
        ("federation.fail_partitions=[9]", "partition ids in [0, 4)"),
        ("client.lr='fast'", "config client.lr='fast' must be a number"),
        ("adapter.mode=prefix", "adapter.mode='prefix' is not allowed"),
        (
            "output.export_plug_in=2",
            "config output.export_plug_in=2 must be true or false (also 1 / 0, yes / no)",
        ),
        ("output.tensorboard=maybe", "config output.tensorboard='maybe' must be true or false"),
        ("federation.rounds=2.5", "config federation.rounds=2.5 must be an integer"),
        ("federation.rounds='three'", "config federation.rounds='three' must be an integer"),
        ("federation.fail_partitions=[1.5]", "config federation.fail_partitions[0]=1.5 must be an integer"),
        ("name=5", 'config name=5 must be a string (quote it: "...")'),
        ("task=arc_eazy", "task='arc_eazy' is unknown; use one of synthetic, openbookqa, arc_easy"),
        ("model='./no-such-dir'", "model='./no-such-dir' is not a directory; use one of smollm2-135m"),
        ("model='no-such.gguf'", "model='no-such.gguf' is not a file; give the path of an existing .gguf"),
        ("model='gpt-17'", "model='gpt-17' is unknown; use one of smollm2-135m"),
        ("emulator.corpus=wiki", "emulator.corpus='wiki' is not allowed; use one of 'wikipedia', 'wikitext'"),
        ("name='../escape'", "config name='../escape' is invalid; it must be a folder name: no / or \\"),
        ("name='a/b'", "config name='a/b' is invalid"),
        ("task='synthetic:5'", "task='synthetic:5': synthetic:<n> needs an integer n >= 10"),
        ("federation.rounds", "must look like section.key=value"),
    ],
)
def test_bad_values_are_rejected_before_any_heavy_work(override, message):
    with pytest.raises(ValueError) as error:
        load_config(ROOT / "simulations/configs/tiny.toml", [override])
    assert message in str(error.value)


@pytest.mark.parametrize(
    "strategy, kwargs, message",
    [
        (
            "fedprox",
            '{proximal_mu="abc"}',
            "config federation.strategy_kwargs.proximal_mu='abc' must be a number, not a string",
        ),
        (
            "fedprox",
            "{proximal_mu=true}",
            "config federation.strategy_kwargs.proximal_mu=True must be a number",
        ),
        (
            "fedprox",
            "{proximal_mu=-1}",
            "config federation.strategy_kwargs.proximal_mu=-1.0 is invalid; it must be >= 0 (0: FedAvg)",
        ),
        ("fedadam", "{eta=-1}", "config federation.strategy_kwargs.eta=-1.0 is invalid; it must be > 0"),
        (
            "fedyogi",
            "{eta=0.1, beta_2=1}",
            "config federation.strategy_kwargs.beta_2=1.0 is invalid; it must be in [0, 1)",
        ),
        (
            "krum",
            "{num_malicious_nodes=-3}",
            "config federation.strategy_kwargs.num_malicious_nodes=-3 is invalid; it must be >= 0",
        ),
        (
            "multikrum",
            "{num_nodes_to_select=2.5}",
            "config federation.strategy_kwargs.num_nodes_to_select=2.5 must be an integer",
        ),
        # Flower's own check, reworded to name the config key.
        (
            "fedtrimmedavg",
            "{beta=0.9}",
            "config federation.strategy_kwargs.beta=0.9 is invalid; Flower's FedTrimmedAvg refuses it: "
            "`beta` must be in the range [0, 0.5).",
        ),
        # A callable cannot come from a config.
        (
            "bulyan",
            "{selection_rule=1}",
            "config federation.strategy_kwargs=['selection_rule'] is invalid; it must be arguments of "
            "bulyan: num_malicious_nodes",
        ),
    ],
)
def test_strategy_kwargs_values_are_checked_when_the_config_is_read(strategy, kwargs, message):
    overrides = [f"federation.strategy={strategy}", f"federation.strategy_kwargs={kwargs}"]
    with pytest.raises(ValueError) as error:
        load_config(ROOT / "simulations/configs/tiny.toml", overrides)
    assert message in str(error.value)


def test_strategy_kwargs_are_typed_as_flower_declares_them():
    config = load_config(
        ROOT / "simulations/configs/tiny.toml",
        ["federation.strategy=fedprox", "federation.strategy_kwargs.proximal_mu=0"],
    )
    assert config.federation.strategy_kwargs == {"proximal_mu": 0.0}
    assert isinstance(config.federation.strategy_kwargs["proximal_mu"], float)
    config = load_config(
        ROOT / "simulations/configs/tiny.toml",
        ["federation.strategy=fedtrimmedavg", "federation.strategy_kwargs.beta=0.4"],
    )
    assert config.federation.strategy_kwargs == {"beta": 0.4}


def test_a_paper_task_with_an_unknown_task_source_is_refused_when_the_config_is_read(monkeypatch):
    monkeypatch.setenv("SCALEOT_TASK_SOURCE", "ftp")
    with pytest.raises(ValueError, match=r"^SCALEOT_TASK_SOURCE='ftp' is unknown; use one of olmo, hub$"):
        load_config(ROOT / "simulations/configs/tiny.toml", ["task=arc_easy"])
    assert load_config(ROOT / "simulations/configs/tiny.toml", ["task=synthetic"]).task == "synthetic"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["simulation.backend=thread"],
            "config simulation.backend='thread' is invalid; it must be one of ray, inprocess",
        ),
        (
            ["simulation.backend=inprocess", "federation.crash_partitions=[1]"],
            "config federation.crash_partitions=[1] is invalid; it must be empty with "
            "simulation.backend='inprocess' (it needs client processes: use 'ray')",
        ),
        (
            ["simulation.backend=inprocess", "federation.slow_partitions=[0]", "federation.slow_seconds=5"],
            "config federation.slow_partitions=[0] is invalid; it must be empty with "
            "simulation.backend='inprocess' (it needs client processes: use 'ray')",
        ),
        (
            ["simulation.backend=inprocess", "simulation.ray_address=auto"],
            "config simulation.ray_address='auto' is invalid; it must be empty with "
            "simulation.backend='inprocess'",
        ),
    ],
)
def test_what_the_inprocess_backend_cannot_do_is_refused_in_one_line(overrides, message):
    with pytest.raises(ValueError) as error:
        load_config(ROOT / "simulations/configs/tiny.toml", overrides)
    assert str(error.value) == message
    # The Ray backend takes each of these (the test hooks included).
    ray = [o.replace("inprocess", "ray") for o in overrides if o != "simulation.backend=thread"]
    assert load_config(ROOT / "simulations/configs/tiny.toml", ray).simulation.backend == "ray"


def test_flower_run_config_names_the_file_overrides_and_run_options():
    run_config = {
        "config-file": "simulations/configs/tiny.toml",
        "overrides": "federation.rounds=1 federation.num_clients=2 name='x y'",
        "run-dir": "/tmp/run",
        "seed": 7,  # a declared experiment key is one more override
    }
    config, run_dir, resume = from_flower_run_config(run_config, ROOT)
    assert (config.federation.rounds, config.federation.num_clients, config.name, config.seed) == (
        1,
        2,
        "x y",
        7,
    )
    assert (run_dir, resume) == ("/tmp/run", False)
    with pytest.raises(ValueError, match="needs 'config-file'"):
        from_flower_run_config({}, ROOT)


def flower_run_config(*run_config_args: str) -> dict:
    """What Flower's ServerApp gets as ``context.run_config`` for ``flwr run . --run-config ARGS``."""
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    return get_fused_config_from_dir(ROOT, parse_config_args(list(run_config_args)))


def test_declared_experiment_keys_override_the_config_file_and_unset_ones_keep_it(tmp_path):
    config, run_dir, resume = from_flower_run_config(flower_run_config(), ROOT)
    assert config == load_config(ROOT / "simulations/configs/tiny.toml") and (run_dir, resume) == ("", False)
    config, _, _ = from_flower_run_config(
        flower_run_config("federation.rounds=3 client.lr=0.01 overrides='federation.rounds=4 seed=2'"), ROOT
    )
    assert (config.federation.rounds, config.client.lr, config.seed) == (4, 0.01, 2)  # overrides come last
    experiment = tmp_path / "mine.toml"
    experiment.write_text(
        'config-file = "simulations/configs/tiny.toml"\nmodel = "tiny-qwen2"\n'
        "[federation]\nrounds = 1\nnum_clients = 2\nmin_clients = 1\n"
    )
    config, _, _ = from_flower_run_config(flower_run_config(str(experiment)), ROOT)
    assert (config.model, config.federation.rounds, config.federation.num_clients) == ("tiny-qwen2", 1, 2)
    assert config.emulator == load_config(ROOT / "simulations/configs/tiny.toml").emulator
    # Flower rejects an undeclared key: declare it in pyproject or use `overrides`
    with pytest.raises(ValueError, match="'client.max_length' is not present"):
        flower_run_config("client.max_length=32")
    with pytest.raises(ValueError, match="federation.rounds=0 is invalid"):
        from_flower_run_config(flower_run_config("federation.rounds=0"), ROOT)


def test_every_declared_experiment_key_is_a_run_config_key():
    declared = flower_run_config()
    for key in set(declared) - {"config-file", "overrides", "run-dir", "resume", "overwrite"}:
        node = RunConfig()
        for part in key.split("."):
            assert hasattr(node, part), f"pyproject [tool.flwr.app.config] declares unknown key {key}"
            node = getattr(node, part)
        assert declared[key] == "", f"{key} must default to '' (keep the config file's value)"


def test_flower_resume_continues_with_the_run_directory_config(tmp_path):
    (tmp_path / "config.toml").write_text(RunConfig(name="earlier", seed=5).to_toml())
    run_config = flower_run_config(f"run-dir='{tmp_path}' resume=true federation.rounds=6")
    config, run_dir, resume = from_flower_run_config(run_config, ROOT)
    assert (config.name, config.seed, config.federation.rounds) == ("earlier", 5, 6)  # not tiny.toml's
    assert (run_dir, resume) == (str(tmp_path), True)
    with pytest.raises(ValueError, match="on resume only federation.rounds"):
        from_flower_run_config(flower_run_config(f"run-dir='{tmp_path}' resume=true seed=1"), ROOT)
    with pytest.raises(ValueError, match="resume=true needs 'run-dir'"):
        from_flower_run_config(flower_run_config("resume=true"), ROOT)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("false", False),
        ("0", False),
        ("no", False),
        ("No", False),
        ("true", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_set_reads_booleans_and_numbers_as_they_say(value, expected):
    # Issue 23 §3: values typed on a command line are typed by the declared field, quoted or bare.
    config = load_config(ROOT / "simulations/configs/tiny.toml", [f"output.tensorboard='{value}'"])
    assert config.output.tensorboard is expected
    config = load_config(ROOT / "simulations/configs/tiny.toml", [f"output.tensorboard={value}"])  # bare word
    assert config.output.tensorboard is expected
    config = load_config(
        ROOT / "simulations/configs/tiny.toml", ["federation.rounds='3'", "emulator.alpha='0.25'"]
    )
    assert (config.federation.rounds, config.emulator.alpha) == (3, 0.25)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('[federation]\nrounds = "2"', "config federation.rounds='2' must be an integer, not a string"),
        ('[emulator]\nalpha = "0.5"', "config emulator.alpha='0.5' must be a number, not a string"),
        ('[output]\ntensorboard = "false"', "config output.tensorboard='false' must be true or false, not a"),
        (
            '[federation]\nfail_partitions = ["1"]',
            "config federation.fail_partitions[0]='1' must be an integer",
        ),
        ("[federation]\nrounds = 2.0", "config federation.rounds=2.0 must be an integer"),
        ("[client]\nlr = true", "config client.lr=True must be a number"),
    ],
)
def test_a_config_file_value_of_the_wrong_type_is_refused_quoted_numbers_too(line, message, tmp_path):
    # A file is typed TOML: "2" is a string there, as 2.0 is a float; only command-line text is spelled out.
    path = tmp_path / "mine.toml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError) as error:
        load_config(path)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_float_field_with_an_integer_default_takes_a_fraction():
    # Typed by the declaration (client_num_cpus: float = 0), not the default's type: 0.5 was "must be a int".
    config = load_config(ROOT / "simulations/configs/tiny.toml", ["simulation.client_num_gpus=0.25"])
    assert config.simulation.client_num_gpus == 0.25


@pytest.mark.parametrize("value", ["false", "0", "no"])
def test_flower_resume_false_as_a_string_starts_a_new_run(value, tmp_path):
    # Issue 23 §3: `flwr run` with resume = "false" resumed the old run (bool("false") is true).
    (tmp_path / "config.toml").write_text(RunConfig(name="earlier", seed=5).to_toml())
    run_config = flower_run_config(f"run-dir='{tmp_path}' resume='{value}' federation.rounds='3'")
    assert run_config["resume"] == value  # Flower passes the string as it is
    config, run_dir, resume = from_flower_run_config(run_config, ROOT)
    assert resume is False and (config.name, config.federation.rounds) == (
        "tiny",
        3,
    )  # tiny.toml, not the run
    config, _, resume = from_flower_run_config(flower_run_config(f"run-dir='{tmp_path}' resume='yes'"), ROOT)
    assert resume is True and config.name == "earlier"


def test_an_unparseable_flower_value_is_one_line_naming_key_value_and_what_is_allowed():
    with pytest.raises(ValueError) as error:
        from_flower_run_config(flower_run_config("resume='maybe'"), ROOT)
    assert str(error.value) == "run config resume='maybe' must be true or false (also 1 / 0, yes / no)"
    with pytest.raises(ValueError, match="^config federation.rounds='three' must be an integer$"):
        from_flower_run_config(flower_run_config("federation.rounds='three'"), ROOT)


@pytest.mark.parametrize(
    ("override", "read"),
    [
        ("emulator.stage1.harmonizer_rank=32", lambda c: c.emulator.stage1.harmonizer_rank == 32),
        ("emulator.src.rank_keep=0.5", lambda c: c.emulator.src.rank_keep == 0.5),
        ("emulator.src.rank-keep=0.5", lambda c: c.emulator.src.rank_keep == 0.5),
        ("emulator.stage1={harmonizer_rank=32}", lambda c: c.emulator.stage1.harmonizer_rank == 32),
    ],
)
def test_a_nested_set_overrides_a_value_the_file_gives_flat(override, read):
    # tiny.toml writes harmonizer_rank and rank_keep flat in [emulator]; --set in the nested form the README
    # shows was refused as the key "given twice".
    assert read(load_config(ROOT / "simulations/configs/tiny.toml", [override]))


def test_a_flat_set_overrides_a_value_the_file_gives_nested_but_one_file_may_not_give_both(tmp_path):
    path = tmp_path / "nested.toml"
    path.write_text(
        "[emulator.stage1]\nharmonizer_rank = 8\nstage1_steps = 3\n[federation]\nnum-clients = 2\n"
    )
    config = load_config(path, ["emulator.harmonizer-rank=32", "federation.num_clients=3"])
    assert (config.emulator.stage1.harmonizer_rank, config.emulator.stage1.stage1_steps) == (32, 3)
    assert config.federation.num_clients == 3  # "num-clients" in the file, "num_clients" in --set: one key
    path.write_text("[emulator]\nharmonizer_rank = 16\n[emulator.stage1]\nharmonizer_rank = 8\n")
    with pytest.raises(ValueError, match=r"^config emulator.harmonizer_rank is given twice: flat and in"):
        load_config(path, ["emulator.harmonizer_rank=32"])


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe[federation]\n")
    with pytest.raises(ValueError) as error:
        load_config(path)
    assert str(error.value) == f"{path} is not UTF-8 TOML (byte 0xff at offset 0: invalid start byte)"


def test_a_config_file_starting_with_a_byte_order_mark_is_read_as_without_it(tmp_path):
    # Some Windows editors start UTF-8 files with one; tomllib refused it as "Invalid statement (line 1)".
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[federation]\nrounds = 3\n".encode())
    assert load_config(path).federation.rounds == 3
    path.write_bytes("\ufeff[federation]\nrounds = 3\n".encode() + b"\xff\n")
    with pytest.raises(ValueError, match=r"\(byte 0xff at offset 27: invalid start byte\)$"):
        load_config(path)  # offsets still count the mark's 3 bytes: they point into the file as it is


def finished_run(run_dir: Path, rounds: int) -> Path:
    """The config and metrics files of a run that has done ``rounds`` rounds (no model needed)."""
    config = RunConfig(federation=FederationConfig(rounds=rounds))
    (run_dir / "config.toml").write_text(config.to_toml())
    (run_dir / "config.json").write_text(config.to_json())
    (run_dir / "metrics.json").write_text(f'{{"status": "finished", "rounds_done": {rounds}}}')
    return run_dir


def test_resume_refuses_fewer_rounds_than_the_run_has_done(tmp_path):
    run = finished_run(tmp_path, rounds=2)
    with pytest.raises(ValueError) as error:
        check_resumable(run, resume_config(run, ["federation.rounds=1"]))
    assert str(error.value) == (
        f"federation.rounds=1 is below the 2 rounds {run} has done; resume it with federation.rounds >= 2, "
        "or start a new run"
    )
    for rounds in (2, 3):
        check_resumable(run, resume_config(run, [f"federation.rounds={rounds}"]))


def test_an_unknown_key_on_resume_is_named_unknown_as_in_a_new_run(tmp_path):
    run = finished_run(tmp_path, rounds=2)
    with pytest.raises(ValueError) as new:
        load_config(ROOT / "simulations/configs/tiny.toml", ["federation.rouds=3"])
    with pytest.raises(ValueError) as resumed:
        resume_config(run, ["federation.rouds=3"])
    assert str(resumed.value) == str(new.value)
    assert str(new.value).startswith("unknown config key 'federation.rouds' in [federation]")
    with pytest.raises(ValueError, match=r"^on resume only .*; not emulator.stage1.harmonizer_rank=8$"):
        resume_config(run, ["evaluation.plug-in-every=2", "emulator.stage1.harmonizer_rank=8"])


def test_resume_may_change_rounds_but_not_what_was_trained(tmp_path):
    (tmp_path / "config.toml").write_text(RunConfig().to_toml())
    assert resume_config(tmp_path, ["federation.rounds=9"]).federation.rounds == 9
    with pytest.raises(ValueError, match="on resume only federation.rounds"):
        resume_config(tmp_path, ["client.lr=0.1"])
    with pytest.raises(ValueError, match="is not a run directory"):
        resume_config(tmp_path / "nothing", [])


def test_default_backend_is_one_actor_on_all_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    backend = backend_config(RunConfig().simulation)
    assert backend["client_resources"]["num_cpus"] == 2 and backend["init_args"]["num_cpus"] == 2
    joined = backend_config(
        load_config(ROOT / "simulations/configs/tiny.toml", ["simulation.ray_address=auto"]).simulation
    )
    assert joined["init_args"]["address"] == "auto" and "num_cpus" not in joined["init_args"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["federation.realign_steps=-1"],
            "config federation.realign_steps=-1 is invalid; it must be >= 0 (0: off)",
        ),
        (["federation.realign_lr=0"], "config federation.realign_lr=0.0 is invalid; it must be > 0"),
        (
            ["federation.realign_steps=2", "emulator.method=uniform", "emulator.rank_keep=1.0"],
            "config federation.realign_steps=2 is invalid; it must be 0 unless the emulator has harmonizers "
            "(method='scaleot' with alpha > 0)",
        ),
        (
            ["federation.realign_steps=2", "emulator.alpha=0"],
            "config federation.realign_steps=2 is invalid; it must be 0 unless the emulator has harmonizers "
            "(method='scaleot' with alpha > 0)",
        ),
    ],
)
def test_realignment_is_refused_in_one_line_where_there_is_nothing_to_realign(overrides, message):
    with pytest.raises(ValueError) as error:
        load_config(ROOT / "simulations/configs/tiny.toml", overrides)
    assert str(error.value) == message


def test_realignment_is_off_by_default_and_takes_a_harmonizer_method():
    assert load_config(ROOT / "simulations/configs/tiny.toml").federation.realign_steps == 0
    config = load_config(ROOT / "simulations/configs/tiny.toml", ["federation.realign_steps=3"])
    assert (config.federation.realign_steps, config.federation.realign_lr) == (3, 1e-3)
