"""`scaleot compare`: method planning, sweeps, the compare file, reuse of finished runs, and the outputs.

The end-to-end test runs `scaleot compare --quick` (five simulations, on the in-process backend in this
process), then reruns it, which must reuse every finished method.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import INPROCESS

from simulations.run_config import load_config
from simulations.studies.compare import CompareConfig, load_compare, parse_sweep, plan, run_method

CONFIG = "simulations/configs/compare-smollm2.toml"
ROOT = Path(__file__).resolve().parents[2]
KINDS = {"zero-shot", "full", "uniform", "uniform+distill", "importance-drop", "scaleot"}


@pytest.mark.parametrize("quick", [False, True])
def test_compare_files_parse_and_their_base_round_trips(quick, tmp_path):
    base, _ = load_compare(ROOT / CONFIG, quick=quick)
    (tmp_path / "base.toml").write_text(base.to_toml())
    assert load_config(tmp_path / "base.toml") == base


def test_plan_sets_each_kind_and_adds_the_sweep_once():
    base, compare = load_compare(ROOT / CONFIG)
    sweep = parse_sweep(["alpha=0.25,0.75", "rank_keep=0.8,1"])
    planned = plan(base, compare, sweep)
    labels = [m.label(base.emulator) for m, _ in planned]
    assert labels == [
        "full",
        "uniform α=0.25",
        "uniform α=0.5",
        "uniform+distill α=0.25 distill_steps=60",
        "importance-drop α=0.25",
        "scaleot α=0.25 β=1",
        "scaleot α=0.25 β=0.5 src_projections=qk src_rank=energy",
        "scaleot α=0.5 β=1",
        "scaleot α=0.25 β=0.8",  # the sweep's (0.25, 1) is a configured one: run once
        "scaleot α=0.75 β=0.8",
        "scaleot α=0.75 β=1",
    ]
    by_label = dict(zip(labels, (c for _, c in planned), strict=True))
    assert by_label["full"].emulator.method == "full" and by_label["full"].emulator.alpha == 0
    assert by_label["uniform α=0.5"].emulator.src.rank_keep == 1.0  # LayerDrop without SRC
    # Only the emulator section differs between methods.
    for _, config in planned:
        assert {k: v for k, v in config.to_dict().items() if k != "emulator"} == {
            k: v for k, v in base.to_dict().items() if k != "emulator"
        }
    assert planned[8][0].slug(base.emulator) == "scaleot-a0.25-b0.8"
    assert planned[3][0].slug(base.emulator) == "uniform-distill-a0.25-distill_steps60"


def test_bad_sweeps_and_compare_tables_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="--sweep 'alpha' must look like key=v1,v2"):
        parse_sweep(["alpha"])
    base, compare = load_compare(ROOT / CONFIG)
    with pytest.raises(ValueError, match=r"unknown config key 'emulator.alpah'"):
        plan(base, compare, parse_sweep(["alpah=0.1"]))
    with pytest.raises(
        ValueError, match=r"unknown config key 'compare.dense' in \[compare\]; valid keys: scaleot, uniform"
    ):
        CompareConfig.from_dict({"dense": []})
    with pytest.raises(ValueError, match="compare.uniform must not set method"):
        CompareConfig.from_dict({"uniform": [{"method": "scaleot"}]})
    plain = tmp_path / "plain.toml"
    plain.write_text('model = "tiny-llama"\n')
    with pytest.raises(ValueError, match="--quick needs a \\[quick\\] table"):
        load_compare(plain, quick=True)


def test_quick_merges_over_the_file_and_overrides_come_last():
    base, compare = load_compare(ROOT / CONFIG, quick=True, overrides=["federation.rounds=1"])
    assert (base.model, base.task, base.federation.rounds) == ("tiny-llama", "synthetic", 1)
    assert (
        base.client.batch_size == 8 and base.emulator.stage1.harmonizer_loss == "local"
    )  # kept from the file
    assert [dict(s) for s in compare.uniform] == [{"alpha": 0.5}]


def test_quick_replaces_a_key_the_file_writes_flat_when_quick_writes_it_nested_and_the_reverse(tmp_path):
    for file_form, quick_form in (
        ("[emulator]\nharmonizer_rank = 8\n", "[quick.emulator.stage1]\nharmonizer_rank = 16\n"),
        ("[emulator.stage1]\nharmonizer_rank = 8\n", "[quick.emulator]\nharmonizer_rank = 16\n"),
    ):
        path = tmp_path / "c.toml"
        path.write_text(f'model = "tiny-llama"\ntask = "synthetic"\n{file_form}[compare]\n{quick_form}')
        assert load_compare(path)[0].emulator.stage1.harmonizer_rank == 8
        assert load_compare(path, quick=True)[0].emulator.stage1.harmonizer_rank == 16


def test_a_directory_of_another_experiment_is_refused(tmp_path):
    base, _ = load_compare(ROOT / CONFIG, quick=True)
    other = base.to_dict() | {"seed": 7}
    (tmp_path / "config.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="holds a run of another config"):
        run_method(base, tmp_path)


def test_a_failed_run_is_started_over_not_resumed_and_kept_aside(tmp_path, monkeypatch):
    # A run in which no round trained anything (e.g. every client refused its config) has a checkpoint after
    # its last round; resuming it would replay nothing, so a rerun of compare must start it again.
    import simulations.runner as runner

    base, _ = load_compare(ROOT / CONFIG, quick=True)
    run_dir = tmp_path / "uniform-a0.5"
    (run_dir / "checkpoint").mkdir(parents=True)
    (run_dir / "checkpoint" / "latest").write_text("round-0002")
    (run_dir / "config.json").write_text(json.dumps(base.to_dict()))
    failed = {"status": "failed", "reason": "no client reply was aggregated in any of the 2 round(s)"}
    (run_dir / "metrics.json").write_text(json.dumps(failed))
    calls = []

    def simulate(config, directory, resume=None):
        calls.append(resume)
        return {"status": "finished"}

    monkeypatch.setattr(runner, "simulate", simulate)
    assert run_method(base, run_dir) == ({"status": "finished"}, "ran")
    assert calls == [None]
    kept = tmp_path / "uniform-a0.5.failed"
    assert json.loads((kept / "metrics.json").read_text()) == failed and not run_dir.exists()


def test_a_run_that_failed_after_training_rounds_is_resumed_not_started_over(tmp_path, monkeypatch):
    # An error ended it (a backend crash, a full disk) after 2 rounds that trained: its checkpoint goes on.
    import simulations.runner as runner

    base, _ = load_compare(ROOT / CONFIG, quick=True)
    run_dir = tmp_path / "uniform-a0.5"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(base.to_dict()))
    failed = {"status": "failed", "reason": "the simulation backend failed: boom", "rounds_done": 2}
    (run_dir / "metrics.json").write_text(json.dumps(failed | {"empty_rounds": 0}))
    calls = []

    def simulate(config, directory, resume=None):
        calls.append(resume)
        return {"status": "finished"}

    monkeypatch.setattr(runner, "simulate", simulate)
    assert run_method(base, run_dir) == ({"status": "finished"}, "resumed")
    assert calls == [run_dir] and not run_dir.with_name("uniform-a0.5.failed").exists()


# --- end to end --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_compare(tmp_path_factory) -> Path:
    from simulations.cli import main

    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--config", CONFIG, "--quick", *INPROCESS, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_quick_compare_writes_every_row_the_paired_column_and_the_plot(quick_compare):
    data = json.loads((quick_compare / "comparison.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert {r["kind"] for r in rows.values()} == KINDS
    assert len(rows) == 6
    full = rows["full"]
    for row in rows.values():
        assert row["plug_in"]["acc_stderr"] > 0 and row["full_zs"]["acc"] == full["full_zs"]["acc"]
        assert row["vs_full"] is not None  # paired to full on the same test examples
        if row["kind"] in ("uniform", "uniform+distill", "scaleot"):
            gap = row["plug_in"]["acc"] - row["emulator_ft"]["acc"]
            assert row["privacy_gap"] == pytest.approx(gap)
            assert row["param_ratio"] < 1 and row["build_seconds"] > 0
            assert row["step_seconds"] > 0 and row["peak_memory_mb"] > 0
            assert row["bytes_down"] == row["bytes_up"] == full["bytes_down"] > 0  # the adapter, both ways
    assert full["vs_full"] == {"mean": 0.0, "stderr": 0.0}
    # ScaleOT and uniform+distill are also paired with uniform LayerDrop at their α (all 0.5 in --quick).
    uniform = next(r for r in rows.values() if r["kind"] == "uniform")
    for row in rows.values():
        if row["kind"] in ("uniform+distill", "scaleot"):
            diff = row["plug_in"]["acc"] - uniform["plug_in"]["acc"]
            assert row["vs_uniform"]["mean"] == pytest.approx(diff)
    assert "vs_uniform" not in uniform
    assert rows["zero-shot"]["plug_in"] == full["full_zs"]

    table = (quick_compare / "comparison.md").read_text()
    assert "plug-in − uniform, same α (paired)" in table
    assert "plug-in − full (paired)" in table and all(f"| {name} |" in table for name in rows)
    assert (quick_compare / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    # Per-example correctness is in each run's metrics.json (the paired column is computed from it).
    metrics = json.loads((quick_compare / "full" / "metrics.json").read_text())
    assert len(metrics["results"]["plug_in"]["correct"]) == metrics["results"]["plug_in"]["n"]
    # The compare file turns the per-run plug-in export off: the adapter stays, plug-in/ is not written.
    assert (quick_compare / "full" / "adapter.safetensors").is_file()
    assert not (quick_compare / "full" / "plug-in").exists()


@pytest.mark.slow
def test_rerun_reuses_every_finished_method(quick_compare, caplog):
    from simulations.cli import main

    before = (quick_compare / "comparison.json").read_text()
    # The sweep point is the configured ScaleOT setting: parsed, planned once, nothing new to run.
    args = ["compare", "--config", CONFIG, "--quick", *INPROCESS, "--out", str(quick_compare)]
    with caplog.at_level(logging.INFO):
        assert main([*args, "--sweep", "alpha=0.5", "rank_keep=0.8"]) == 0
    assert caplog.text.count(": reused in") == 5 and ": ran in" not in caplog.text
    assert json.loads((quick_compare / "comparison.json").read_text())["rows"] == json.loads(before)["rows"]


@pytest.mark.slow
def test_report_writes_the_finished_rows_and_runs_nothing(quick_compare, tmp_path, caplog, monkeypatch):
    import shutil

    from simulations.cli import main
    from simulations.studies import compare as compare_module

    copy = tmp_path / "copy"
    shutil.copytree(quick_compare, copy)
    before = json.loads((copy / "comparison.json").read_text())
    rows, runs = before["rows"], before["runs"]
    unfinished, slug = next((label, slug) for label, slug in runs.items() if label != "full")
    (copy / slug / "metrics.json").unlink()  # as a run stopped before its first round ends leaves it

    def no_runs(config, run_dir):
        raise AssertionError(f"--report ran {run_dir}")

    monkeypatch.setattr(compare_module, "run_method", no_runs)
    args = ["compare", "--config", CONFIG, "--quick", *INPROCESS, "--out", str(copy), "--report"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert f"{unfinished}: not finished yet, no row" in caplog.text
    written = json.loads((copy / "comparison.json").read_text())["rows"]
    assert [r["method"] for r in written] == [r["method"] for r in rows if r["method"] != unfinished]


def test_a_method_whose_run_failed_is_marked_failed_not_tabulated(tmp_path, monkeypatch):
    from simulations.studies import compare as compare_module
    from strategies.records import RunFailedError

    base, settings = load_compare(ROOT / CONFIG, quick=True)

    def untrained(config, run_dir):
        raise RunFailedError(
            "no client reply was aggregated in any of the 1 round(s), so nothing was trained"
        )

    monkeypatch.setattr(compare_module, "run_method", untrained)
    with pytest.raises(RuntimeError, match=r"5 method\(s\) failed"):
        compare_module.compare(base, settings, tmp_path)
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["rows"] == [] and len(data["failed"]) == 5
    assert all("nothing was trained" in why for why in data["failed"].values())
    table = (tmp_path / "comparison.md").read_text()
    assert all(f"**{label}: FAILED**, no results: no client reply" in table for label in data["failed"])
    assert "comparison.png" not in table and not (tmp_path / "comparison.png").exists()  # no row, no plot


# --- several tasks and seeds (issue 9) ---------------------------------------------------------------

EVIDENCE = "simulations/configs/compare-evidence.toml"


def test_evidence_config_plans_every_cell_with_its_own_corpus_exclusion():
    from simulations.studies.compare import cell_dir, cells

    base, settings = load_compare(ROOT / EVIDENCE)
    configs = cells(base, settings)
    tasks = ["arc_easy", "openbookqa", "arc_challenge", "piqa", "sciq", "hellaswag", "arc_easy"]
    assert [(c.task, c.seed) for c in configs] == list(zip(tasks, [0, 0, 0, 0, 0, 0, 1], strict=True))
    for config in configs:
        labels = [m.label(config.emulator) for m, _ in plan(config, settings)]
        assert labels[:4] == ["full", "uniform α=0.25", "importance-drop α=0.25", "crash α=0.25"]
        # and ScaleOT from cached activations, at 60 live steps, with SRC and with layer sharing
        assert labels[4:] == [
            "scaleot α=0.25 β=1 cached_blocks=192 harmonizer_init=least-squares policy_interval=25 "
            "stage1_steps=400",
            "scaleot α=0.25 β=1",
            "scaleot α=0.25 β=0.5 src_projections=qk src_rank=energy",
            "scaleot α=0.25 β=1 share_replaced=True",
        ]
        assert all(
            c.emulator.data.corpus_exclude == config.task
            for _, c in plan(config, settings)
            if c.emulator.method == "scaleot"
        )
    assert cell_dir(Path("out"), configs[0]) == Path("out/arc_easy-s0")
    with pytest.raises(ValueError, match="compare.runs entry .* must be a table"):
        CompareConfig.from_dict({"runs": [{"task": "synthetic", "seeds": 2}]})


@pytest.mark.parametrize("seed", [1.5, True, "one"])
def test_a_cell_seed_that_is_not_an_integer_is_refused_in_one_line(seed):
    # Issue 23 §3: int() took 1.5 and true as seed 1.
    from simulations.studies.compare import cells

    base, settings = load_compare(ROOT / EVIDENCE)
    with pytest.raises(ValueError, match=rf"^config compare.runs\[0\].seed={seed!r} must be an integer$"):
        cells(base, CompareConfig.from_dict({"runs": [{"task": "synthetic", "seed": seed}]}))
    assert cells(base, CompareConfig.from_dict({"runs": [{"task": "synthetic", "seed": "2"}]}))[0].seed == 2


def _metrics(directory: Path, plug_in: list[int], emulator_ft: list[int] | None) -> None:
    # Rows named as runs named them before each row had one name: read back under today's names.
    results = {"Plug-in": {"correct": plug_in}}
    if emulator_ft is not None:
        results["Emulator-FT"] = {"correct": emulator_ft}
        results["Emulator-ZS"] = {"correct": [0, 0, 1, 1]}
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps({"status": "finished", "results": results}))


def test_summary_pairs_within_cells_and_averages_seeds_then_tasks(tmp_path):
    from emulator.results import paired_difference
    from simulations.studies.compare import cell_dir, cells
    from simulations.studies.compare_summary import markdown, plot_summary, summarise

    base, settings = load_compare(ROOT / EVIDENCE, quick=True)
    configs = cells(base, settings)  # synthetic, seeds 0 and 1
    planned = [(c, plan(c, settings), cell_dir(tmp_path, c)) for c in configs]
    full = [[1, 1, 0, 1], [1, 0, 1, 1]]
    uniform = [[0, 1, 0, 0], [1, 0, 0, 1]]
    scaleot = [[1, 1, 0, 0], [1, 0, 1, 0]]
    for k, (config, methods, directory) in enumerate(planned):
        slugs = {m.kind: m.slug(config.emulator) for m, _ in methods}
        _metrics(directory / slugs["full"], full[k], None)
        _metrics(directory / slugs["uniform"], uniform[k], [0, 0, 0, 0])
        _metrics(directory / slugs["scaleot"], scaleot[k], [0, 1, 0, 0])
    summary = summarise(planned, base.emulator.alpha)
    label = next(m.label(base.emulator) for m, _ in planned[0][1] if m.kind == "scaleot")
    row = summary["tasks"]["synthetic"][label]
    seeds = [paired_difference(tuple(scaleot[k]), tuple(full[k])) for k in range(2)]
    assert row["vs_full"][0] == pytest.approx((seeds[0][0] + seeds[1][0]) / 2)
    assert row["vs_full"][1] == pytest.approx((seeds[0][1] ** 2 + seeds[1][1] ** 2) ** 0.5 / 2)
    assert row["vs_uniform"][0] == pytest.approx((0.25 + 0.0) / 2)
    assert row["plug_in"][0] == pytest.approx(0.5) and row["gap"][0] == pytest.approx((0.25 + 0.25) / 2)
    assert summary["mean"][label] == row  # one task: the mean over tasks is that task
    assert "importance-drop" not in " ".join(summary["mean"])  # never ran: left out, not zero
    text = markdown(summary)
    full_label = next(m.label(base.emulator) for m, _ in planned[0][1] if m.kind == "full")
    assert row["emulator_zs"] == pytest.approx((0.5, (0.25 / 3) ** 0.5 / 2**0.5))  # two seeds of 2/4
    assert "emulator_zs" not in summary["tasks"]["synthetic"][full_label]  # full's emulator is the model
    assert "| method | emulator ZS | emulator FT | plug-in | Δ (paired) |" in text
    assert "## synthetic" in text and f"| {label} | 50.0 ± 20.4 | 25.0 ± " in text
    assert "mean over" not in text  # one task: its table is not repeated as a mean
    assert "(summary.png)" in text
    assert plot_summary(summary, tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"

    # Against a chosen method (ScaleOT - importance-drop, say): one more paired column, seeds combined alike.
    uniform_label = next(m.label(base.emulator) for m, _ in planned[0][1] if m.kind == "uniform")
    against = summarise(planned, base.emulator.alpha, against=uniform_label)
    assert against["tasks"]["synthetic"][label]["vs_against"] == pytest.approx(row["vs_uniform"])
    assert "vs_against" not in against["tasks"]["synthetic"][uniform_label]  # not against itself
    assert f"| plug-in − {uniform_label} (paired) |" in markdown(against)
    # ScaleOT's seed 1 unfinished: its row says so instead of a row of dashes.
    (planned[1][2] / slugs["scaleot"] / "metrics.json").unlink()
    partial = markdown(summarise(planned, base.emulator.alpha))
    assert f"| {label} (a seed unfinished: see each seed's comparison.md) | – |" in partial
    assert f"| {uniform_label} | " in partial


def test_while_a_task_is_unfinished_the_summary_means_over_the_tasks_the_anchors_finished(tmp_path):
    # A long evidence run reports before its last cell: the mean over all tasks stays empty (it would compare
    # methods over different tasks), and a second mean covers the tasks where full and uniform have finished,
    # for the methods finished on all of them.
    import dataclasses

    from simulations.studies.compare import cell_dir, cells
    from simulations.studies.compare_summary import markdown, plot_summary, summarise

    base, settings = load_compare(ROOT / EVIDENCE, quick=True)
    seed0 = cells(base, settings)[0]
    configs = [dataclasses.replace(seed0, task=task) for task in ("arc_easy", "piqa", "sciq")]
    planned = [(c, plan(c, settings), cell_dir(tmp_path, c)) for c in configs]
    finished = {  # task -> the kinds finished there
        "arc_easy": ("full", "uniform", "scaleot", "importance-drop"),
        "piqa": ("full", "uniform", "scaleot"),
        "sciq": ("full", "scaleot"),  # uniform unfinished: not an anchored task
    }
    scaleot = {"arc_easy": [1, 1, 0, 1], "piqa": [1, 0, 0, 0]}
    for config, methods, directory in planned:
        for method, _ in methods:
            if method.kind in finished[config.task]:
                plug = scaleot.get(config.task, [0, 0, 0, 0]) if method.kind == "scaleot" else [0, 1, 0, 0]
                ft = None if method.kind == "full" else [0, 0, 1, 0]
                _metrics(directory / method.slug(config.emulator), plug, ft)
    summary = summarise(planned, base.emulator.alpha)
    labels = {m.kind: m.label(base.emulator) for m, _ in planned[0][1]}
    assert set(summary["mean"]) == {labels["full"], labels["scaleot"]}  # finished every task
    assert "vs_uniform" not in summary["mean"][labels["scaleot"]]  # uniform did not
    anchored = summary["anchored"]
    assert anchored["tasks"] == ["arc_easy", "piqa"]
    assert anchored["anchors"] == [labels["full"], labels["uniform"]]
    assert set(anchored["mean"]) == {labels["full"], labels["uniform"], labels["scaleot"]}  # not imp.-drop
    assert anchored["mean"][labels["scaleot"]]["plug_in"][0] == pytest.approx((0.75 + 0.25) / 2)
    assert anchored["mean"][labels["scaleot"]]["vs_uniform"][0] == pytest.approx((0.5 + 0.0) / 2)
    text = markdown(summary)
    assert "## mean over the 2 tasks " in text and "(arc_easy, piqa)" in text
    section = text.split("## mean over the 2 tasks")[1]
    assert f"| {labels['scaleot']} | 50.0 ± " in section and labels["importance-drop"] not in section
    assert plot_summary(summary, tmp_path / "summary.png") is not None
    empty = markdown({"tasks": {"piqa": {}, "sciq": {}}, "mean": {}, "methods": []})
    assert "## piqa\n\nNo method has finished every seed of this task yet." in empty
    assert "## mean over 2 tasks\n\nNo method has finished every seed of every task yet." in empty

    # Every task finished by the anchors: the mean over all tasks says it, no second table.
    _metrics(planned[2][2] / planned[2][1][1][0].slug(configs[2].emulator), [0, 1, 0, 0], [0, 0, 1, 0])
    assert planned[2][1][1][0].kind == "uniform"
    complete = summarise(planned, base.emulator.alpha)
    assert "anchored" not in complete and set(complete["mean"]) == {
        labels["full"],
        labels["uniform"],
        labels["scaleot"],
    }


PAPER = "simulations/configs/compare-opt-1.3b.toml"


def test_the_paper_table_plans_opt_1_3b_on_the_six_tasks_with_every_baseline():
    from simulations.studies.compare import cells

    base, settings = load_compare(ROOT / PAPER)
    configs = cells(base, settings)
    assert [c.task for c in configs] == [
        "openbookqa",
        "piqa",
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "sciq",
    ]
    assert base.model == "facebook/opt-1.3b" and base.evaluation.test_limit == 0
    planned = plan(configs[0], settings)
    kinds = [m.kind for m, _ in planned]
    assert kinds == ["full", "uniform", "uniform+distill", "importance-drop", "crash", "scaleot", "scaleot"]
    compressed = [c.emulator for _, c in planned[1:]]
    assert {e.alpha for e in compressed} == {0.5} and compressed[-1].src.rank_keep == 0.8
    assert all((e.adapter_bottom, e.adapter_top, e.data.corpus) == (2, 2, "wikitext") for e in compressed)


@pytest.mark.slow
def test_the_paper_table_runs_its_plan_on_a_tiny_opt(tmp_path):
    from simulations.cli import main

    assert main(["compare", "--config", PAPER, "--quick", *INPROCESS, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "synthetic-s0" / "comparison.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == [
        "zero-shot", "full", "uniform", "uniform+distill", "importance-drop", "crash", "scaleot", "scaleot"
    ]  # fmt: skip
    assert all(r["plug_in"]["acc_stderr"] > 0 for r in rows)
    summary = (tmp_path / "summary.md").read_text()
    assert "| scaleot α=0.5 β=0.8 " in summary


def test_against_a_method_the_comparison_lacks_is_refused_before_anything_runs(tmp_path):
    from simulations.studies.compare import compare_tasks

    base, settings = load_compare(ROOT / EVIDENCE, quick=True)
    with pytest.raises(
        ValueError, match=r"^--against='crash' is not a method of this comparison; use one of"
    ):
        compare_tasks(base, settings, tmp_path, report_only=True, against="crash")
    assert list(tmp_path.iterdir()) == []


def _finished_run(run_dir: Path, config, metrics: dict | None = None) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config.to_json())
    (run_dir / "metrics.json").write_text(json.dumps({"status": "finished", **(metrics or {})}))


def _results(config, correct: list[int]) -> dict:
    """The metrics.json fields a comparison row is made of: the config, plug-in's results, no rounds."""
    plug_in = {"acc": sum(correct) / len(correct), "acc_stderr": 0.1, "n": len(correct), "correct": correct}
    return {"config": config.to_dict(), "results": {"plug_in": plug_in}, "rounds": []}


def test_report_refuses_a_finished_run_of_another_config_naming_the_key(tmp_path):
    # `--report --set federation.rounds=5` used to tabulate 3-round runs as 5-round ones.
    import dataclasses

    from simulations.studies.compare import cell_dir, cells, compare, compare_tasks

    base, settings = load_compare(ROOT / EVIDENCE, quick=True)  # rounds = 1
    config = cells(base, settings)[1]
    method, planned = plan(config, settings)[1]
    ran = dataclasses.replace(planned, federation=dataclasses.replace(planned.federation, rounds=3))
    run_dir = cell_dir(tmp_path, config) / method.slug(config.emulator)
    _finished_run(run_dir, ran)
    message = rf"^{run_dir} holds a run of another config \(federation.rounds=3 there, 1 planned\); --report "
    with pytest.raises(ValueError, match=message):
        compare_tasks(base, settings, tmp_path, report_only=True)
    assert not (tmp_path / "summary.json").exists()  # every cell checked before any is written
    with pytest.raises(ValueError, match=message):
        compare(config, settings, cell_dir(tmp_path, config), report_only=True)
    assert not (cell_dir(tmp_path, config) / "comparison.json").exists()
    # The running path refuses it with the same check, worded for itself.
    with pytest.raises(ValueError, match=r"\(federation.rounds=3 there, 1 planned\); remove it or give"):
        run_method(planned, run_dir)


def test_against_is_checked_and_tabulated_without_compare_runs(tmp_path):
    from simulations.studies.compare import compare

    base, settings = load_compare(ROOT / CONFIG, quick=True)
    with pytest.raises(
        ValueError, match=r"^--against='nope' is not a method of this comparison; use one of 'full', "
    ):
        compare(base, settings, tmp_path / "out", report_only=True, against="nope")
    assert not (tmp_path / "out").exists()  # refused before anything runs or is written
    method, config = next((m, c) for m, c in plan(base, settings) if m.kind == "uniform")
    uniform = method.label(base.emulator)
    _finished_run(tmp_path / "out" / method.slug(base.emulator), config, _results(config, [1, 0, 1, 1]))
    compare(base, settings, tmp_path / "out", report_only=True, against=uniform)
    assert f"| plug-in − {uniform} (paired) |" in (tmp_path / "out" / "comparison.md").read_text()


def test_compare_out_that_cannot_be_a_directory_is_one_line(tmp_path, capsys):
    from simulations.cli import main

    notes = tmp_path / "notes.md"
    notes.write_text("x")
    allowed = "give a directory compare wrote: --report runs nothing, it tabulates the runs finished there"
    for config in (CONFIG, EVIDENCE):  # one comparison, and one per [compare].runs cell
        assert main(["compare", "--config", config, "--quick", "--report", "--out", str(notes)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert err == [f"error: --out={notes} is a file; {allowed}"]


def test_the_privacy_utility_picture_takes_the_stolen_accuracy_as_its_axis(tmp_path):
    # Issue 21 §5: plug-in against what the model-stealing probe recovers, two measured axes.
    from emulator.results import EMULATOR_FT, PLUG_IN
    from simulations.studies.compare_report import plot_comparison

    def acc(value):
        return {"acc": value, "acc_stderr": 0.02}

    rows = [
        {"kind": "uniform", "method": "uniform", PLUG_IN: acc(0.55), EMULATOR_FT: acc(0.41)},
        {"kind": "scaleot", "method": "scaleot", PLUG_IN: acc(0.62), EMULATOR_FT: acc(0.53)},
    ]
    rows[0]["stolen_zs"] = acc(0.39)  # the probe ran on uniform only: ScaleOT has no point on this axis
    stolen = plot_comparison(rows, tmp_path / "stolen.png", privacy="stolen_zs")
    assert stolen.read_bytes()[:4] == b"\x89PNG"


# --- where compare writes, what it refuses, how it stops -------------------------------------------------


def _simulate_run(run_dir: Path) -> list[str]:
    """What `scaleot simulate` leaves in a run directory (enough to be recognised as not compare's)."""
    run_dir.mkdir(parents=True)
    for name in ("config.json", "config.toml", "metrics.json"):
        (run_dir / name).write_text("{}")
    return sorted(p.name for p in run_dir.iterdir())


@pytest.mark.parametrize("config", [CONFIG, EVIDENCE], ids=["one-comparison", "cells"])
def test_report_refuses_an_out_compare_did_not_write_and_one_where_nothing_finished(config, tmp_path):
    # --report used to create an absent --out, or write into a simulate run's directory, an empty comparison
    # ("0 test examples") linking a comparison.png it never wrote, and exit 0.
    from simulations.studies.compare import compare, compare_tasks

    base, settings = load_compare(ROOT / config, quick=True)
    report = compare_tasks if settings.runs else compare
    allowed = "give a directory compare wrote: --report runs nothing, it tabulates the runs finished there"
    absent = tmp_path / "new"
    with pytest.raises(ValueError, match=rf"^--out={absent} does not exist; {allowed}$"):
        report(base, settings, absent, report_only=True)
    assert not absent.exists()
    run = tmp_path / "run"
    before = _simulate_run(run)
    message = rf"^--out={run} holds files compare did not write \(config.json, config.toml, metrics.json\); "
    with pytest.raises(ValueError, match=message + allowed):
        report(base, settings, run, report_only=True)
    assert sorted(p.name for p in run.iterdir()) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        ValueError, match=rf"^--report: no method has finished in (any cell of )?--out={empty}; "
    ):
        report(base, settings, empty, report_only=True)
    assert list(empty.iterdir()) == []


def test_report_of_cells_writes_the_finished_cells_and_skips_the_others(tmp_path):
    from simulations.studies.compare import cell_dir, cells, compare_tasks

    base, settings = load_compare(ROOT / EVIDENCE, quick=True)
    first, second = cells(base, settings)
    method, config = plan(first, settings)[1]
    _finished_run(cell_dir(tmp_path, first) / method.slug(first.emulator), config, _results(config, [1, 0]))
    compare_tasks(base, settings, tmp_path, report_only=True)
    assert (cell_dir(tmp_path, first) / "comparison.json").is_file()
    assert not cell_dir(tmp_path, second).exists()  # nothing finished there: no empty comparison
    assert (tmp_path / "summary.md").is_file()


def test_running_into_a_directory_of_something_else_is_refused_before_any_run(tmp_path, monkeypatch):
    from simulations.studies import compare as compare_module

    def no_runs(config, run_dir):
        raise AssertionError(f"compare ran {run_dir}")

    monkeypatch.setattr(compare_module, "run_method", no_runs)
    for config in (CONFIG, EVIDENCE):
        base, settings = load_compare(ROOT / config, quick=True)
        run = tmp_path / Path(config).stem
        before = _simulate_run(run)
        allowed = "give a directory: absent, or one compare wrote \\(to continue it\\)"
        with pytest.raises(
            ValueError, match=rf"^--out={run} holds files compare did not write .*; {allowed}$"
        ):
            (compare_module.compare_tasks if settings.runs else compare_module.compare)(base, settings, run)
        assert sorted(p.name for p in run.iterdir()) == before


def test_cells_whose_every_method_failed_link_no_summary_picture(tmp_path, monkeypatch):
    from simulations.studies import compare as compare_module
    from strategies.records import RunFailedError

    def untrained(config, run_dir):
        raise RunFailedError("nothing was trained")

    monkeypatch.setattr(compare_module, "run_method", untrained)
    base, settings = load_compare(ROOT / EVIDENCE, quick=True)
    with pytest.raises(RuntimeError, match=r"cell\(s\) failed"):
        compare_module.compare_tasks(base, settings, tmp_path)
    assert "summary.png" not in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "summary.png").exists()


def test_a_sweep_that_sets_method_is_refused_as_the_compare_lists_are():
    # It was run as a uniform emulator under the label "scaleot α=0.25 β=1 method=uniform".
    with pytest.raises(ValueError, match=r"^--sweep 'method=uniform' must not set method: it adds ScaleOT"):
        parse_sweep(["method=uniform", "alpha=0.25"])
    with pytest.raises(ValueError, match=r"^config compare.scaleot must not set method: the list it is in"):
        CompareConfig.from_dict({"scaleot": [{"alpha": 0.25, "method": "uniform"}]})


def test_an_interrupted_compare_says_to_rerun_compare_not_simulate(tmp_path, monkeypatch):
    import signal

    from simulations.runner import RunInterrupted
    from simulations.studies import compare as compare_module

    def interrupted(config, run_dir):
        raise RunInterrupted(
            signal.SIGINT,
            f"stopped by SIGINT; {run_dir} keeps every finished round: `scaleot simulate --resume {run_dir}` "
            "continues the run",
        )

    monkeypatch.setattr(compare_module, "run_method", interrupted)
    base, settings = load_compare(ROOT / CONFIG, quick=True)
    with pytest.raises(RunInterrupted) as stop:
        compare_module.compare(base, settings, tmp_path)
    assert stop.value.signum == signal.SIGINT
    assert str(stop.value) == (
        f"stopped by SIGINT in full; {tmp_path / 'full'} keeps every finished round and {tmp_path} every "
        "finished method: rerun the same `scaleot compare` command to continue the comparison"
    )


def test_a_bad_key_is_named_where_it_was_written_quick_and_compare_entries_too(tmp_path):
    source = (ROOT / CONFIG).read_text()
    path = tmp_path / "c.toml"
    cases = [
        ("[quick.compare]", "[quick.compar]", "'quick.compar' in [quick]; valid keys: name, model"),
        ("stage1_steps = 4", "stage1_stesp = 4", "'quick.emulator.stage1_stesp' in [quick.emulator]; "),
        (
            "rounds = 2",
            "rouns = 2",
            "'quick.federation.rouns' in [quick.federation]; valid keys: num_clients",
        ),
        (
            "uniform = [{ alpha = 0.5 }]",
            "uniform = [{ alpha = 0.5, bogus = 1 }]",
            "'quick.compare.uniform[0].bogus' in [quick.compare.uniform[0]]; ",
        ),
        (
            "uniform = [{ alpha = 0.25 }, { alpha = 0.5 }]",
            "uniform = [{ alpha = 0.25 }, { alpha = 0.5, bogus = 1 }]",
            "'compare.uniform[1].bogus' in [compare.uniform[1]]; valid keys: method",
        ),
    ]
    for old, new, where in cases:
        assert source.count(old) == 1
        path.write_text(source.replace(old, new))
        # [quick] is checked with or without --quick; the file's own [compare] lists are planned without it
        # (--quick plans [quick.compare]'s).
        file_entry = where.startswith("'compare.")
        for quick in (False,) if file_entry else (False, True):
            with pytest.raises(ValueError) as error:
                plan(*load_compare(path, quick=quick))
            assert str(error.value).startswith(f"unknown config key {where}"), (quick, str(error.value))
    path.write_text(source.replace("seed = 0", "sede = 0"))
    with pytest.raises(ValueError, match=r"'sede' in the top level; valid keys: name, .*, compare, quick$"):
        load_compare(path)
    # A value of the wrong type in [quick] is named there too, with or without --quick.
    path.write_text(source.replace("test_limit = 24", 'test_limit = "24"'))
    for quick in (False, True):
        with pytest.raises(ValueError, match=r"^config quick.evaluation.test_limit='24' must be an integer"):
            load_compare(path, quick=quick)
    path.write_text(
        source.replace("uniform = [{ alpha = 0.25 }, { alpha = 0.5 }]", "uniform = [{ alpha = 2 }]")
    )
    with pytest.raises(ValueError, match=r"^compare.uniform\[0\]: emulator.alpha=2.0 is out of range"):
        plan(*load_compare(path))
