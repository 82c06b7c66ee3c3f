"""The measurement scripts of simulations/studies run end to end on a tiny model (they are not tests
themselves: these only check that they run and write what they promise)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


@pytest.mark.slow
def test_measure_emulators_scores_each_emulator_on_its_corpus(tmp_path, monkeypatch, capsys):
    from simulations.studies import measure_emulators

    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rows.json"
    measure_emulators.main(
        [
            "--model=tiny-llama",
            "--task=synthetic",
            "--methods",
            "scaleot",
            "uniform",
            "--alphas=0.5",
            "--steps=2",
            "--test-limit=8",
            "--ppl-seq-len=32",
            "--set=corpus='pydoc'",
            "--set=harmonizer_rank=16",
            "--set=seq_len=32",
            "--set=batch_size=2",
            f"--json={out}",
        ]
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["full model", "scaleot", "uniform"]
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 and r["accuracy"]["n"] == 8 for r in rows)
    assert rows[1]["num_parameters"] < rows[0]["num_parameters"]  # α 0.5: half the middle replaced
    assert "| ppl (corpus val) |" in capsys.readouterr().out


def test_stage1_study_pairs_each_scaleot_run_with_the_longest_live_one(tmp_path):
    from emulator.results import EMULATOR_FT, PLUG_IN
    from simulations.studies.stage1_study import main, stage1_rows

    def run(name, emulator, plug_in, seconds, method="scaleot"):
        bundle = tmp_path / "bundles" / name
        bundle.mkdir(parents=True)
        if seconds is not None:
            (bundle / "manifest.json").write_text(json.dumps({"stage1_seconds": seconds}))
        results = {PLUG_IN: {"acc": sum(plug_in) / 4, "correct": plug_in}, EMULATOR_FT: {"acc": 0.25}}
        metrics = {"status": "finished", "results": results, "bundle": {"path": str(bundle)},
                   "config": {"emulator": {"method": method, **emulator}}}  # fmt: skip
        (tmp_path / "cell" / name).mkdir(parents=True)
        (tmp_path / "cell" / name / "metrics.json").write_text(json.dumps(metrics))

    run("scaleot-60", {"stage1_steps": 60}, [1, 0, 0, 1], None)  # built before times were recorded
    run("scaleot-1000", {"stage1_steps": 1000}, [1, 1, 0, 1], [900.0, 1800.0])
    run("scaleot-cached", {"stage1_steps": 500, "cached_blocks": 256}, [1, 1, 1, 1], [60.0, 90.0])
    run("uniform", {"stage1_steps": 60}, [0, 0, 0, 0], None, method="uniform")
    rows = stage1_rows(tmp_path / "cell")
    assert [r["run"] for r in rows] == ["scaleot-1000", "scaleot-60", "scaleot-cached"]
    assert rows[0]["vs_reference"] is None and rows[1]["stage1_cpu_seconds"] is None
    assert rows[2]["cpu_ratio"] == pytest.approx(0.05)
    assert rows[2]["vs_reference"] == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError, match=r"--reference='uniform' is not a finished scaleot run"):
        stage1_rows(tmp_path / "cell", "uniform")
    assert main([str(tmp_path / "cell")]) == 0
    table = (tmp_path / "cell" / "stage1.md").read_text()
    assert "| scaleot-cached | 500 | 256 | identity |" in table and "| 0.050 |" in table
    assert (tmp_path / "cell" / "stage1.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: bad input must be refused before one loads."""
    from simulations.studies import steal_study

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(steal_study, "load_model", refuse)


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "argument --steps: '0' is not an integer of at least 1"),
        (["--test-limit", "-1"], "argument --test-limit: '-1' is not an integer of at least 0"),
        (["--config", "nope.toml"], "argument --config: 'nope.toml' is not a file"),
    ],
)
def test_steal_study_refuses_bad_options_when_parsed(argv, message, capsys, no_model_load):
    from simulations.studies import steal_study

    with pytest.raises(SystemExit) as stop:
        steal_study.main(argv)
    assert stop.value.code == 2
    assert [line.split("error: ", 1)[1] for line in _error_lines(capsys)] == [message]


def test_steal_study_refuses_bad_config_input_in_one_line_before_the_model_loads(capsys, no_model_load):
    from simulations.studies import steal_study

    config = str(Path(__file__).resolve().parents[2] / "simulations/configs/compare-smollm2.toml")
    assert steal_study.main(["--config", config, "--set", "federation.rouds=2"]) == 2
    assert _error_lines(capsys)[0].startswith("error: unknown config key 'federation.rouds' in [federation]")
    # Scoring the full model, then an empty table, used to be all --kinds crash did on a file without crash.
    assert steal_study.main(["--config", config, "--kinds", "crash", "uniform"]) == 2
    assert _error_lines(capsys) == [
        f"error: --kinds crash: {config} has no setting of crash; use one of uniform, uniform+distill, "
        "importance-drop, scaleot (or add a setting to its [compare] table)"
    ]


def test_steal_study_writes_beside_the_comparison_of_the_probed_cell(capsys, no_model_load):
    """compare --report reads steal.json from each cell's directory: a study of a file with compare.runs must
    write there (it wrote at the compare root, where no report looked), probing the cell as compare ran it."""
    from simulations.studies import steal_study
    from simulations.studies.compare import load_compare

    config = str(Path(__file__).resolve().parents[2] / "simulations/configs/compare-evidence.toml")
    base, compare = load_compare(config)
    cell, out = steal_study.probed_cell(base, compare, config)
    assert out == Path("runs/evidence-paper-tasks/arc_easy-s0") and (cell.task, cell.seed) == ("arc_easy", 0)
    base, compare = load_compare(config, overrides=["task=piqa"])
    cell, out = steal_study.probed_cell(base, compare, config)
    assert out.name == "piqa-s0" and cell.emulator.data.corpus_exclude != ""
    plain, plain_compare = load_compare(config, overrides=["compare.runs=[]"])
    assert steal_study.probed_cell(plain, plain_compare, config)[1] == Path("runs/evidence-paper-tasks")
    assert steal_study.main(["--config", config, "--set", "seed=7"]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(f"error: task=arc_easy seed=7: not a cell of {config}'s compare.runs; pick one")
    assert "task=hellaswag seed=0, task=arc_easy seed=1 with --set task=... --set seed=..." in line


def test_steal_study_help_gives_the_defaults(capsys):
    from simulations.studies import steal_study

    with pytest.raises(SystemExit):
        steal_study.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "probe steps, the budget (default: 120)" in text
    assert "(default: 0, the config's evaluation.test_limit)" in text


def test_stage1_study_bad_input_is_one_line(tmp_path, capsys):
    from simulations.studies.stage1_study import main

    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    assert _error_lines(capsys) == [
        f"error: CELL={missing} is not a directory; give a compare cell directory, e.g. "
        "runs/stage1-study/arc_easy-s0"
    ]
    cell = tmp_path / "cell"
    (cell / "scaleot-a0.5").mkdir(parents=True)
    metrics = {"status": "finished", "config": {"emulator": {"method": "scaleot"}}}
    (cell / "scaleot-a0.5" / "metrics.json").write_text(json.dumps(metrics))
    assert main([str(cell), "--reference", "nope"]) == 2
    assert _error_lines(capsys) == [
        f"error: --reference='nope' is not a finished scaleot run of {cell}: ['scaleot-a0.5']"
    ]
    assert not (cell / "stage1.md").exists()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "(default: the finished live ScaleOT run with the most stage-1 steps)" in " ".join(
        capsys.readouterr().out.split()
    )


def test_dp_study_table_gives_the_delta_its_epsilons_are_at():
    from emulator.results import EMULATOR_FT, FULL_ZS, PLUG_IN
    from simulations.studies.dp_study import markdown

    row = {"acc": 0.5, "acc_stderr": 0.1, "correct": [1, 0, 1, 0]}
    results = {PLUG_IN: row, FULL_ZS: row, EMULATOR_FT: row}
    privacy = {"epsilon": 7.25, "delta": 1e-5, "noise_multiplier": 1.2, "noise_std": 0.003}
    runs = {
        "no DP": {"results": results, "rounds": [{}]},
        "z=1.2": {"results": results, "rounds": [{"privacy": privacy}]},
    }
    heading, *_, no_dp, noised = markdown(runs, 0.01).splitlines()
    # The heading said "ε at δ" with no value: the table could not be read without the config.
    assert heading == "Fixed clipping C = 0.01; ε at δ = 1e-05 after the last round (RDP, no amplification)."
    assert no_dp.startswith("| no DP | – |") and noised.startswith("| z=1.2 | 7.25 |")
