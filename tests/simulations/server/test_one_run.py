"""A run directory holds one run, a resume continues that run's own checkpoint, a run's models are re-scored
only as they were trained, and two nodes never share a partition unseen (issue 23 §2)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeGrid
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from emulator.results import MCResult
from simulations.cli import main
from simulations.server.evaluation import EMULATOR_ZS, FULL_ZS
from simulations.server.outputs import (
    RunState,
    has_checkpoint,
    load_checkpoint,
    prepare_run_dir,
    save_checkpoint,
)
from strategies import wire
from strategies.offsite import offsite_strategy
from strategies.records import RoundRecord
from strategies.settings import EmulatorOffer, Sampling

CONFIG = "simulations/configs/tiny.toml"
ROW = {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.5, "acc_norm_stderr": 0.1, "n": 4}


def state(rounds: int, seed_tag: float = 0.0) -> RunState:
    zero_shot = {FULL_ZS: MCResult.from_row(ROW | {"acc": seed_tag}), EMULATOR_ZS: MCResult.from_row(ROW)}
    return RunState(zero_shot=zero_shot, history=[RoundRecord(round=r) for r in range(1, rounds + 1)])


def arrays(value: float) -> dict[str, np.ndarray]:
    return {"0.mlp.weight": np.full((2, 2), value, dtype=np.float32)}


def error_line(capsys) -> str:
    """The one ``error:`` line on stderr (progress bars of transformers' own saves and loads aside)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- one run per directory ----------------------------------------------------------------------------------


def test_a_new_run_into_a_directory_holding_a_run_is_refused_in_one_line_before_anything_starts(
    tmp_path, capsys
):
    run_dir = tmp_path / "D"
    run_dir.mkdir()
    for name in ("config.toml", "config.json", "metrics.json"):
        (run_dir / name).write_text("{}")
    save_checkpoint(run_dir, arrays(1.0), {}, state(2))
    began = time.monotonic()
    assert main(["simulate", "--config", CONFIG, "--set", "seed=2", "--out", str(run_dir)]) == 2
    line = error_line(capsys)
    assert line.startswith(
        f"error: run directory {run_dir} already holds checkpoint, config.json, config.toml"
    )
    assert f"`--resume {run_dir}` to continue its run, or `--overwrite` to replace it" in line
    assert time.monotonic() - began < 30  # no Ray, no model
    assert (run_dir / "checkpoint" / "round-0002").is_dir()  # nothing of the old run touched

    assert main(["simulate", "--resume", str(run_dir), "--overwrite"]) == 2
    assert "--overwrite starts a new run over an old one; it does not go with --resume" in error_line(capsys)


def test_a_resume_into_an_out_holding_a_run_is_not_told_to_overwrite_it(tmp_path, capsys):
    from simulations.run_config import load_config

    source, out = tmp_path / "D2", tmp_path / "D1"
    source.mkdir()
    config = load_config(CONFIG)
    (source / "config.toml").write_text(config.to_toml())
    (source / "config.json").write_text(config.to_json())
    save_checkpoint(source, arrays(1.0), {}, state(1))
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(["simulate", "--resume", str(source), "--out", str(out)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: run directory {out} already holds metrics.json; a run directory holds")
    # --overwrite is refused with --resume, so it is not the advice.
    assert line.endswith(f"drop --out to continue {source} in place (--overwrite does not go with --resume)")
    assert (out / "metrics.json").read_text() == "{}"


def test_simulate_overwrite_without_out_is_refused_not_ignored(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[3] / CONFIG
    assert main(["simulate", "--config", str(config), "--overwrite"]) == 2
    assert error_line(capsys).startswith("error: --overwrite without --out: a new run goes into a new")
    assert list(tmp_path.iterdir()) == []  # no run started


def test_flwr_run_into_a_run_dir_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    from simulations.server.app import run_dir_of

    def run_config(args: str) -> dict:  # what the ServerApp gets for `flwr run . --run-config ARGS`
        return get_fused_config_from_dir(Path.cwd(), parse_config_args([args]))

    run_dir = tmp_path / "D"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r'or "overwrite=true" to replace it$'):
        run_dir_of(run_config(f"run-dir='{run_dir}'"))
    with pytest.raises(ValueError, match="already holds metrics.json"):
        run_dir_of(run_config(f"run-dir='{run_dir}' overwrite='false'"))  # a string, read as it says
    (run_dir / "config.toml").write_text(Path(CONFIG).read_text())
    with pytest.raises(ValueError, match="overwrite=true starts a new run over an old one; not with resume"):
        run_dir_of(run_config(f"run-dir='{run_dir}' overwrite=true resume=true"))
    _, directory, resume = run_dir_of(run_config(f"run-dir='{run_dir}' overwrite=true"))
    assert (directory, resume) == (run_dir, False) and list(run_dir.iterdir()) == []


def test_overwrite_removes_the_old_runs_files_and_nothing_else(tmp_path):
    run_dir = tmp_path / "D"
    save_checkpoint(run_dir, arrays(1.0), {}, state(2))
    for name in ("config.toml", "metrics.json", "adapter.safetensors", ".metrics.json.tmp-99", "notes.txt"):
        (run_dir / name).write_text("x")
    (run_dir / "plug-in").mkdir()
    prepare_run_dir(run_dir, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]
    prepare_run_dir(tmp_path / "fresh")  # absent: nothing to refuse
    (tmp_path / "empty").mkdir()
    prepare_run_dir(tmp_path / "empty")


def test_continuing_a_run_in_its_own_directory_removes_what_a_killed_write_left(tmp_path):
    run_dir = tmp_path / "D"
    save_checkpoint(run_dir, arrays(1.0), {}, state(1))
    (run_dir / ".metrics.json.tmp-4242").write_text('{"half')
    (run_dir / "checkpoint" / ".round-0002.tmp-4242").mkdir()
    prepare_run_dir(run_dir, resume=run_dir)
    assert sorted(p.name for p in run_dir.rglob("*tmp*")) == []
    assert has_checkpoint(run_dir) and not has_checkpoint(tmp_path / "other")


def test_a_resume_continues_the_round_latest_names_never_a_newer_directory(tmp_path, caplog):
    # A directory that two runs mixed before directories were claimed: another run's round-0005 beside
    # this run's rounds, `latest` naming this run's newest.
    other, run_dir = tmp_path / "other", tmp_path / "D"
    save_checkpoint(other, arrays(9.0), {}, state(5, seed_tag=0.9))
    save_checkpoint(run_dir, arrays(1.0), {}, state(1))
    save_checkpoint(run_dir, arrays(2.0), {}, state(2))
    shutil.copytree(other / "checkpoint" / "round-0005", run_dir / "checkpoint" / "round-0005")
    with caplog.at_level(logging.WARNING, logger="simulations.server.outputs"):
        checkpoint = load_checkpoint(run_dir)
    assert len(checkpoint.state.history) == 2 and float(checkpoint.adapter["0.mlp.weight"][0, 0]) == 2.0
    assert any("round-0005: newer than" in r.message for r in caplog.records)

    # The next round's save keeps this run's previous generation and drops the stray directory.
    save_checkpoint(run_dir, arrays(3.0), {}, state(3))
    rounds = sorted(p.name for p in (run_dir / "checkpoint").glob("round-*"))
    assert rounds == ["round-0002", "round-0003"]


# --- a run's models, as they were trained -------------------------------------------------------------------


@pytest.fixture
def finished_run(tmp_path, monkeypatch, tokenizer) -> Path:
    """A finished run's directory as `scaleot export` and `eval --run` read it, trained on the model
    saved in ``tmp_path / "m"`` (a local path, as `--set model=./m`), with a real emulator bundle in a
    private cache."""
    from emulator.files import write_text
    from emulator.lm.architectures import num_layers
    from emulator.lm.models import load_model, model_fingerprint
    from emulator.scaleot.blocks import adapter_layers
    from emulator.scaleot.bundle import read_manifest
    from emulator.tuning.adapters import adapter_state, prepare_adapter_
    from simulations.run_config import RunConfig
    from simulations.server.bundle_cache import ensure_bundle
    from simulations.server.outputs import write_tensors

    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    save_model(tmp_path / "m", seed=0, tokenizer=tokenizer)
    config = RunConfig.from_dict(
        {
            "model": str(tmp_path / "m"),
            "task": "synthetic",
            "emulator": {"method": "uniform", "alpha": 0.5, "rank_keep": 1.0},
            "evaluation": {"test_limit": 8},
        }
    )
    model, tok = load_model(config.model)
    model_sha256 = model_fingerprint(model)
    bundle = ensure_bundle(config.model, config.emulator, model, tok, model_sha256)
    layers = adapter_layers(num_layers(model), config.emulator.adapter_bottom, config.emulator.adapter_top)
    prepare_adapter_(model, {i: i for i in layers}, config.adapter)
    state = {k: v.numpy() for k, v in adapter_state(model, {i: i for i in layers}).items()}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_text(run_dir / "config.toml", config.to_toml())
    write_tensors(run_dir / "adapter.safetensors", state)
    recorded = {"path": str(bundle), "sha256": read_manifest(bundle)["sha256"], "model_sha256": model_sha256}
    write_text(run_dir / "metrics.json", json.dumps({"status": "finished", "bundle": recorded}))
    return run_dir


def save_model(path: Path, seed: int, tokenizer) -> None:
    from emulator.lm.models import load_model

    shutil.rmtree(path, ignore_errors=True)
    model, _ = load_model("tiny-llama", seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_export_and_eval_refuse_a_model_replaced_since_the_run(finished_run, tmp_path, tokenizer, capsys):
    eval_args = [
        "eval",
        "--run",
        str(finished_run),
        "--task",
        "synthetic",
        "--limit",
        "4",
        "--batch-size",
        "4",
    ]
    assert main(["export", str(finished_run), "--out", str(tmp_path / "before")]) == 0
    assert main([*eval_args, "--row", "plug-in"]) == 0
    capsys.readouterr()

    save_model(tmp_path / "m", seed=1, tokenizer=tokenizer)  # ./m replaced after the run
    assert main(["export", str(finished_run), "--out", str(tmp_path / "after")]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: model='{tmp_path / 'm'}' now has content sha256 ")
    assert f"but the run in {finished_run} trained on " in line
    assert not (tmp_path / "after").exists()
    for row in ("plug-in", "full"):
        assert main([*eval_args, "--row", row]) == 2
        assert "now has content sha256" in error_line(capsys)


def test_eval_refuses_an_emulator_bundle_rebuilt_since_the_run(finished_run, capsys):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    metrics["bundle"]["sha256"] = "0" * 64  # what the run trained with is no longer in the cache
    (finished_run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["eval", "--run", str(finished_run), "--row", "emulator", "--task", "synthetic"]) == 2
    line = error_line(capsys)
    assert f"but the run in {finished_run} trained with 000000000000…; it was rebuilt or replaced" in line


def test_a_truncated_adapter_or_metrics_file_is_one_line_naming_it(finished_run, capsys):
    adapter = finished_run / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-8])
    assert main(["export", str(finished_run)]) == 2
    assert error_line(capsys).startswith(f"error: {adapter} is not a readable safetensors file (")
    assert main(["eval", "--run", str(finished_run), "--row", "plug-in", "--task", "synthetic"]) == 2
    assert error_line(capsys).startswith(f"error: {adapter} is not a readable safetensors file (")

    metrics = finished_run / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])
    assert main(["eval", "--run", str(finished_run), "--row", "full", "--task", "synthetic"]) == 2
    assert error_line(capsys).startswith(f"error: {metrics} is not valid JSON (")


def test_a_resume_with_a_truncated_config_json_is_one_line_naming_it(tmp_path, capsys):
    from simulations.run_config import load_config

    run_dir = tmp_path / "D"
    run_dir.mkdir()
    config = load_config(CONFIG)
    (run_dir / "config.toml").write_text(config.to_toml())
    (run_dir / "config.json").write_text(config.to_json()[:100])
    assert main(["simulate", "--resume", str(run_dir)]) == 2
    assert error_line(capsys).startswith(f"error: {run_dir / 'config.json'} is not valid JSON (")


# --- one partition per node ---------------------------------------------------------------------------------


def trained(msg: Message) -> Message:
    metrics = MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 1.0})
    partition = float(msg.metadata.dst_node_id)  # any adapter of the right shape
    adapter = ArrayRecord({"0.w": Array(np.full((2,), partition, dtype=np.float32))})
    return Message(RecordDict({wire.ARRAYS: adapter, wire.METRICS: metrics}), reply_to=msg)


def test_nodes_claiming_one_partition_or_one_outside_the_run_are_refused_with_their_reason():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    # Node 2 says partition 0 as node 1 does; node 3 says 7 of 4; node 4 splits the data into 3 parts.
    partition_of, reports = {1: 0, 2: 0, 3: 7, 4: 1, 5: 2}, {1: 4, 2: 4, 3: 4, 4: 3, 5: 4}
    grid = FakeGrid(partition_of, trained, reports=reports)
    strategy = offsite_strategy(
        "fedavg", offer=EmulatorOffer("/bundle", num_partitions=4), sampling=Sampling(node_timeout=5.0)
    )
    strategy.start(grid, ArrayRecord({"0.w": Array(np.zeros((2,), dtype=np.float32))}), num_rounds=1)
    (record,) = strategy.history
    assert strategy.partitions == {1: 0, 5: 2}
    assert sorted(record.sampled_partitions) == [0, 2] and record.aggregated == 2
    rejections = "\n".join(record.rejections)
    assert "node 2: reports partition-id 0, which node 1 already holds" in rejections
    assert "node 3: reports partition-id 7, outside [0, num-partitions=4)" in rejections
    assert "node 4: splits the data into num-partitions=3, the run into 4" in rejections


def test_a_partition_whose_node_is_gone_goes_to_the_node_that_now_reports_it():
    from strategies.nodes import handshake

    class Roster:
        partitions = {1: 0}  # node 1 held partition 0 and has disconnected
        refused: dict[int, str] = {}

    roster = Roster()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    handshake(FakeGrid({6: 0}, reports={6: 4}), [6], "/bundle", "", 5.0, roster, num_partitions=4)
    assert roster.partitions == {6: 0} and roster.refused == {}


def test_export_refuses_an_out_holding_another_run_and_takes_its_own_or_a_new_one(
    finished_run, tmp_path, capsys
):
    other = tmp_path / "other"  # another run's directory, with its own exports
    (other / "plug-in").mkdir(parents=True)
    (other / "config.json").write_text("{}")
    (other / "metrics.json").write_text(json.dumps({"status": "finished"}))
    theirs = other / "plug-in" / "config.json"
    theirs.write_text("the other run's plug-in")
    assert main(["export", str(finished_run), "--out", str(other)]) == 2
    assert error_line(capsys) == (
        f"error: --out={other} holds another run (config.json, metrics.json); a run directory holds one run, "
        "and exporting there would replace its plug-in/ and peft-adapter/: give a directory that holds no "
        f"run, or drop --out to export into {finished_run}"
    )
    assert theirs.read_text() == "the other run's plug-in"

    assert main(["export", str(finished_run), "--out", str(finished_run)]) == 0  # its own directory
    assert main(["export", str(finished_run), "--out", str(tmp_path / "new")]) == 0
    assert (finished_run / "plug-in").is_dir() and (tmp_path / "new" / "plug-in").is_dir()


def test_eval_of_a_run_scores_the_runs_test_limit_unless_limit_is_given(finished_run, capsys, caplog):
    # finished_run scored the first 8 test examples (evaluation.test_limit = 8): so does eval --run.
    with caplog.at_level(logging.INFO, logger="scaleot"):
        assert main(["eval", "--run", str(finished_run), "--row", "full", "--batch-size", "8"]) == 0
    assert f"| {finished_run} (full_zs) | synthetic | test | 8 | " in capsys.readouterr().out
    assert "scoring the first 8 test examples, as the run did (its evaluation.test_limit" in caplog.text
    assert main(["eval", "--run", str(finished_run), "--row", "full", "--limit", "4"]) == 0
    assert f"| {finished_run} (full_zs) | synthetic | test | 4 | " in capsys.readouterr().out


def test_eval_of_a_run_truncates_as_the_run_did_unless_max_length_is_given(finished_run, capsys, caplog):
    config = finished_run / "config.toml"
    head, evaluation = config.read_text().split("[evaluation]\n", 1)
    evaluation = re.sub(r"max_length = \d+", "max_length = 6", evaluation, count=1)
    config.write_text(f"{head}[evaluation]\n{evaluation}")
    args = ["eval", "--run", str(finished_run), "--row", "full", "--batch-size", "8"]

    def table_row(extra: list[str]) -> str:
        assert main([*args, *extra]) == 0
        return capsys.readouterr().out.splitlines()[-1].rsplit("|", 2)[0]  # without the eval time

    with caplog.at_level(logging.INFO, logger="scaleot"):
        by_default = table_row([])
    assert "token budget 6 per sequence, as the run's (its evaluation.max_length)" in caplog.text
    assert by_default == table_row(["--max-length", "6"])
    assert by_default != table_row(["--max-length", "512"])
