"""Bad input to the study scripts of simulations/studies is one ``error:`` line and exit status 2, found
before any model loads, any run trains or any child process starts; nothing written earlier is lost."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "simulations/configs/tiny.toml")
COMPARE = str(ROOT / "simulations/configs/compare-smollm2.toml")


def _refuse(*args, **kwargs):
    raise AssertionError("a model was loaded, a run trained or a child process started")


@pytest.fixture
def no_model_load(monkeypatch, tmp_path_factory):
    """Loading a model, running a simulation or starting a child process fails the test."""
    # A temp dir made before the refusal (as they were) lands here, not in /tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tempdir")))
    import emulator.lm.models
    import simulations.runner
    from simulations.studies import measure_emulators, scale_benchmark, steal_study, transfer_study

    monkeypatch.setattr(emulator.lm.models, "load_model", _refuse)  # imported where used
    for module in (steal_study, measure_emulators, transfer_study):
        monkeypatch.setattr(module, "load_model", _refuse)
    monkeypatch.setattr(simulations.runner, "simulate", _refuse)
    monkeypatch.setattr(scale_benchmark.subprocess, "run", _refuse)


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def _usage_error(main, argv, capsys) -> str:
    """The message of argparse's refusal of ``argv`` (exit 2, one line)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    (line,) = _error_lines(capsys)
    return line.split("error: ", 1)[1]


# --- dp_study ----------------------------------------------------------------------------------------------


def _dp_argv(out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        TINY,
        "--set",
        "simulation.backend=inprocess",
        "--noise",
        "0.5",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "difference"),
    [
        (["--clipping-norm", "0.02"], "privacy.clipping_norm=0.01 there, 0.02 planned"),
        (["--set", "client.lr=0.5"], "client.lr=0.001 there, 0.5 planned"),
    ],
)
def test_dp_study_refuses_a_run_of_another_config_before_any_run_trains(
    extra, difference, tmp_path, capsys, no_model_load
):
    """A finished run of another config used to be tabulated as this config's; the no-DP run, first, trained
    before the z=0.5 one was looked at."""
    from simulations.run_config import load_config
    from simulations.studies import dp_study

    privacy = ["privacy.clipping='fixed'", "privacy.noise_multiplier=0.5", "privacy.clipping_norm=0.01"]
    earlier = load_config(TINY, ["simulation.backend='inprocess'", *privacy])
    run_dir = tmp_path / "z0.5"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(earlier.to_json())
    (run_dir / "metrics.json").write_text(json.dumps({"status": "finished"}))
    assert dp_study.main(_dp_argv(tmp_path, *extra)) == 2
    assert _error_lines(capsys) == [
        f"error: {run_dir} holds a run of another config ({difference}); "
        "remove it or give dp_study another --out"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z0.5"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--noise", "0.5", "-1"], "error: config privacy.noise_multiplier=-1.0 is invalid; it must be >= 0"),
        (["--clipping-norm", "-1", "--no-baseline"], "error: config privacy.clipping_norm=-1.0 is invalid"),
        (["--set", "nosuch.x=1"], "error: unknown config key 'nosuch' in the top level; valid keys: name,"),
    ],
)
def test_dp_study_builds_every_planned_config_before_the_first_run(
    extra, message, tmp_path, capsys, no_model_load
):
    from simulations.studies import dp_study

    out = tmp_path / "dp"
    assert dp_study.main(_dp_argv(out, *extra)) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(message)
    assert not out.exists()


def test_dp_study_refuses_a_missing_config_and_an_out_that_is_a_file(tmp_path, capsys, no_model_load):
    from simulations.studies import dp_study

    message = _usage_error(dp_study.main, ["--config", "nope.toml"], capsys)
    assert message == "argument --config: 'nope.toml' is not a file"
    out = tmp_path / "file"
    out.write_text("mine")
    assert dp_study.main(_dp_argv(out)) == 2
    assert _error_lines(capsys) == [
        f"error: --out={out} is a file; give a directory: absent, or one dp_study wrote (to continue it)"
    ]
    assert out.read_text() == "mine"


# --- steal_study -------------------------------------------------------------------------------------------


def test_steal_study_refuses_steal_json_of_another_probe_and_keeps_its_rows(tmp_path, capsys, no_model_load):
    """A rerun with other --steps and --kinds used to drop the earlier rows of steal.json without a word."""
    from emulator.evaluation.probe import ProbeConfig
    from simulations.studies import steal_study
    from simulations.studies.compare import load_compare

    base, _ = load_compare(COMPARE, quick=True)
    probe = ProbeConfig(steps=2, corpus=base.emulator.data.corpus, seed=base.seed)
    earlier = {
        "config": COMPARE,
        "probe": vars(probe),
        "test_examples": 24,
        "rows": [{"method": "uniform α=0.5"}],
    }
    (tmp_path / "steal.json").write_text(json.dumps(earlier))
    argv = ["--config", COMPARE, "--quick", "--out", str(tmp_path)]
    assert steal_study.main([*argv, "--steps", "3", "--kinds", "scaleot"]) == 2
    assert _error_lines(capsys) == [
        f"error: --out={tmp_path} holds steal.json of another probe (--steps: steps=2 there, 3 planned); "
        f"rerun with its settings to add methods to it, or remove {tmp_path / 'steal.json'} or give another "
        "--out to probe anew"
    ]
    assert steal_study.main([*argv, "--steps", "2", "--test-limit", "5"]) == 2
    assert "(--test-limit: test_examples=24 there, 5 planned)" in _error_lines(capsys)[0]
    assert json.loads((tmp_path / "steal.json").read_text()) == earlier


def test_steal_study_refuses_a_steal_json_it_did_not_write(tmp_path, capsys, no_model_load):
    from simulations.studies import steal_study

    (tmp_path / "steal.json").write_text("[]")
    assert steal_study.main(["--config", COMPARE, "--quick", "--out", str(tmp_path)]) == 2
    assert _error_lines(capsys) == [
        f"error: --out={tmp_path} holds a steal.json that steal_study did not write; remove it"
    ]
    assert (tmp_path / "steal.json").read_text() == "[]"


def test_an_unloadable_model_is_named_once():
    from simulations.arguments import unloadable_model

    assert unloadable_model("m", OSError("no config.json")) == "model='m' cannot be loaded: no config.json"
    said = ValueError("model='/tmp/x' is an empty directory; give ...")
    assert unloadable_model("/tmp/x", said) == str(said)


def test_steal_study_refuses_an_out_that_is_a_file_before_the_model_loads(tmp_path, capsys, no_model_load):
    from simulations.studies import steal_study

    out = tmp_path / "file"
    out.write_text("mine")
    assert steal_study.main(["--config", COMPARE, "--quick", "--out", str(out)]) == 2
    assert _error_lines(capsys) == [
        f"error: --out={out} is a file; give a directory: absent, or one steal_study wrote (to add to it)"
    ]


def test_steal_study_model_that_cannot_load_is_one_line(tmp_path, monkeypatch, capsys):
    from simulations.studies import steal_study

    def unloadable(*args, **kwargs):
        raise OSError("Couldn't instantiate the backend tokenizer\nfrom one of: ...")

    monkeypatch.setattr(steal_study, "load_model", unloadable)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text('{"model_type": "llama"}')  # passes the name check; no weights
    argv = ["--config", COMPARE, "--quick", "--set", f"model={str(empty)!r}", "--out", str(tmp_path / "out")]
    assert steal_study.main(argv) == 2
    assert _error_lines(capsys) == [
        f"error: model={str(empty)!r} cannot be loaded: Couldn't instantiate the backend tokenizer from one "
        "of: ..."
    ]


# --- benchmark ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nosuch"], "error: model='nosuch' is unknown; use one of smollm2-135m, tiny-llama,"),
        (["--quick", "--sections", "clients", "--alpha", "2"], "error: emulator.alpha=2.0 is out of range"),
        (["--quick", "--baselines", "crash", "--rank-keep", "0"], "error: emulator.rank_keep=0.0"),
    ],
)
def test_benchmark_refuses_bad_settings_before_the_model_loads(argv, message, capsys, no_model_load):
    from simulations.studies import benchmark

    assert benchmark.main(argv) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(message)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scoring-examples", "-5"], "argument --scoring-examples: '-5' is not an integer of at least 1"),
        (["--batch-size", "0"], "argument --batch-size: '0' is not an integer of at least 1"),
        (["--json", "{tmp}"], "argument --json: '{tmp}' is a directory; give the path of a file to write"),
        (["--json", "{tmp}/file/x.json"],
         "argument --json: '{tmp}/file/x.json' cannot be written: {tmp}/file is a file, not a directory"),
    ],
)  # fmt: skip
def test_benchmark_refuses_bad_options_when_parsed(argv, message, tmp_path, capsys, no_model_load):
    """A --json that cannot be written used to fail after the whole benchmark had run."""
    from simulations.studies import benchmark

    (tmp_path / "file").write_text("")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert _usage_error(benchmark.main, argv, capsys) == message.format(tmp=tmp_path)


def test_benchmark_quick_keeps_the_options_given():
    """--quick used to overwrite --model, --batch-size, --seq-len and --steps without a word."""
    from simulations.studies.benchmark import parse_args

    args = parse_args(
        ["--quick", "--model", "tiny-opt", "--batch-size", "2", "--seq-len", "32", "--steps", "1"]
    )
    assert (args.model, args.batch_size, args.seq_len, args.steps) == ("tiny-opt", 2, 32, 1)
    assert (args.warmup, args.repeats, args.scoring_examples) == (1, 1, 16)  # the rest: --quick's
    args = parse_args(["--batch-size", "2"])
    assert (args.model, args.batch_size, args.seq_len, args.steps) == ("smollm2-135m", 2, 256, 10)


def test_benchmark_model_that_cannot_load_is_one_line_and_leaves_no_temp_dir(tmp_path, monkeypatch, capsys):
    import emulator.lm.models
    from simulations.studies import benchmark

    def unloadable(*args, **kwargs):
        raise OSError("no config.json")

    monkeypatch.setattr(emulator.lm.models, "load_model", unloadable)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert benchmark.main(["--quick", "--sections", "gemm"]) == 2
    assert _error_lines(capsys) == ["error: model='tiny-llama' cannot be loaded: no config.json"]
    assert list(tmp_path.iterdir()) == []


# --- measure_emulators -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "bogus"], "error: emulator.method='bogus' is not allowed; use one of 'scaleot',"),
        (["--alphas", "2"], "error: emulator.alpha=2.0 is out of range; allowed: [0, 1]"),
        (["--set", "nosuch=1"], "error: unknown config key 'emulator.nosuch' in [emulator]; valid keys:"),
        (["--losses", "bogus"], "error: emulator.harmonizer_loss='bogus' is not allowed"),
        (["--task", "nosuch"], "error: task='nosuch' is unknown; use one of synthetic,"),
        (["--model", "nosuch"], "error: model='nosuch' is unknown"),
    ],
)
def test_measure_emulators_refuses_bad_settings_before_the_model_loads(argv, message, capsys, no_model_load):
    from simulations.studies import measure_emulators

    assert measure_emulators.main(["--model", "tiny-llama", "--task", "synthetic", *argv]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(message)


def test_measure_emulators_refuses_bad_counts_and_json_when_parsed(tmp_path, capsys, no_model_load):
    from simulations.studies import measure_emulators

    message = _usage_error(measure_emulators.main, ["--test-limit", "-1"], capsys)
    assert message == "argument --test-limit: '-1' is not an integer of at least 0"
    message = _usage_error(measure_emulators.main, ["--json", str(tmp_path)], capsys)
    assert message == f"argument --json: '{tmp_path}' is a directory; give the path of a file to write"


# --- transfer_study ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--setting", "method=full", "--setting", "method=bogus"],
         "error: emulator.method='bogus' is not allowed"),
        (["--setting", "method=uniform,alpha=3"], "error: emulator.alpha=3.0 is out of range"),
        (["--setting", "method=full,adapter_mode=x"], "error: adapter.mode='x' is not allowed"),
        (["--setting", "alpha"], "error: --setting 'alpha' must look like key=value,key=value"),
        (["--task", "nosuch"], "error: task='nosuch' is unknown"),
        (["--model", "nosuch"], "error: model='nosuch' is unknown"),
    ],
)  # fmt: skip
def test_transfer_study_refuses_every_setting_before_the_model_loads(
    argv, message, tmp_path, capsys, no_model_load
):
    from simulations.studies import transfer_study

    out = tmp_path / "rows.jsonl"
    assert (
        transfer_study.main(["--model", "tiny-llama", "--task", "synthetic", "--out", str(out), *argv]) == 2
    )
    (line,) = _error_lines(capsys)
    assert line.startswith(message)
    assert list(tmp_path.iterdir()) == []


# --- scale_benchmark ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "nope.toml"], "argument --config: 'nope.toml' is not a file"),
        (["--clients", "-5"], "argument --clients: '-5' is not an integer of at least 1"),
        (["--sampled", "0"], "argument --sampled: '0' is not an integer of at least 1"),
    ],
)
def test_scale_benchmark_refuses_bad_options_when_parsed(argv, message, capsys, no_model_load):
    from simulations.studies import scale_benchmark

    assert _usage_error(scale_benchmark.main, argv, capsys) == message


def test_scale_benchmark_builds_every_child_config_in_the_parent(
    tmp_path, monkeypatch, capsys, no_model_load
):
    """A bad config was a child's traceback, then the parent's CalledProcessError, and a temp dir left."""
    from simulations.studies import scale_benchmark

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--config", TINY, "--clients", "4", "8", "--sampled", "2", "--set", "federation.nosuch=1"]
    assert scale_benchmark.main(argv) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("error: unknown config key 'federation.nosuch' in [federation]")
    assert scale_benchmark.main(["--config", TINY, "--clients", "4", "--cpus-per-actor", "-1"]) == 2
    assert _error_lines(capsys) == [
        "error: config simulation.client_num_cpus=-1.0 is invalid; it must be >= 0 (0: all)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_scale_benchmark_failed_child_is_one_line_and_removes_its_temp_dir(tmp_path, monkeypatch, capsys):
    from simulations.studies import scale_benchmark

    def failing(argv, **kwargs):
        Path(argv[-1]).mkdir(parents=True)  # the child had started writing
        return subprocess.CompletedProcess(argv, 1)

    monkeypatch.setattr(scale_benchmark.subprocess, "run", failing)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert scale_benchmark.main(["--config", TINY, "--clients", "4", "--sampled", "2"]) == 1
    assert _error_lines(capsys) == ["error: the run of 4 clients failed (exit status 1); its log is above"]
    assert list(tmp_path.iterdir()) == []
