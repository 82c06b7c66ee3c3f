"""End to end on Flower's simulation runtime with the real Ray backend: `scaleot simulate` on tiny.toml.

Three runs (each Ray start costs ~10 s): the uninterrupted 3-round run with one client that raises (conftest's
``full_run``, shared with test_faults), and a run stopped after round 1 then resumed; together they check
rounds, rows, bytes, fault tolerance and resume.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CONFIG as CONFIG
from conftest import scaleot
from flwr.app import ArrayRecord
from safetensors.torch import load_file

from simulations.config import load_config

pytestmark = pytest.mark.slow


def test_three_rounds_with_rows_bytes_and_a_dropped_client(full_run, failing_partition):
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert {"full_zs", "emulator_zs", "emulator_ft", "plug_in"} <= set(metrics["results"])
    assert all(0 <= row["acc"] <= 1 and row["acc_stderr"] > 0 for row in metrics["results"].values())
    assert all(r["plug_in_acc"] is not None and r["train_loss"] is not None for r in rounds)

    # After the first contact only the adapter crosses the wire: each client receives exactly its bytes.
    adapter_bytes = ArrayRecord(load_file(str(full_run / "adapter.safetensors"))).count_bytes()
    assert all(r["bytes_per_client"] == adapter_bytes for r in rounds)
    assert all(r["bytes_received"] == adapter_bytes * (r["replied"] - r["rejected"]) for r in rounds)

    # The client that raised is dropped with its reason; the round completes with the others.
    first = rounds[0]
    assert failing_partition in first["sampled_partitions"]
    assert first["rejected"] == 1 and first["aggregated"] == first["sampled"] - 1 >= 1
    assert "fails on purpose" in first["rejections"][0]
    stderr = (full_run / "stderr.log").read_text()
    assert stderr.count("round 1/3: loss") == 1 and "dropped the reply of node" in stderr

    assert (full_run / "report.md").read_text().count("±") >= 4
    assert (full_run / "accuracy.png").stat().st_size > 1000
    assert load_config(full_run / "config.toml").federation.fail_partitions == (failing_partition,)


def test_the_run_ends_with_a_plug_in_model_transformers_loads(full_run):
    from transformers import AutoModelForCausalLM

    plugged = AutoModelForCausalLM.from_pretrained(full_run / "plug-in").state_dict()
    adapter = load_file(str(full_run / "adapter.safetensors"))
    assert all(torch.equal(plugged[f"model.layers.{key}"], value) for key, value in adapter.items())
    assert not (full_run / "peft-adapter").exists()  # tiny.toml trains full adapter blocks, not LoRA


def test_a_run_with_tensorboard_on_writes_each_rounds_metrics(full_run):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed; pip install -e '.[dev]'")
    from simulations.tracking import read_scalars

    metrics = json.loads((full_run / "metrics.json").read_text())
    scalars = read_scalars(full_run / "tensorboard")
    assert scalars["train/loss"] == pytest.approx({r["round"]: r["train_loss"] for r in metrics["rounds"]})
    assert set(scalars["eval/plug_in_acc"]) == {1, 2, 3}


def test_a_run_stopped_after_round_one_resumes_to_the_same_adapter(full_run, failing_partition, tmp_path):
    run_dir = tmp_path / "stopped"
    scaleot(
        "simulate",
        "--config",
        CONFIG,
        "--out",
        str(run_dir),
        "--set",
        f"federation.fail_partitions=[{failing_partition}]",
        "--set",
        "federation.rounds=1",
    )
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in stopped["rounds"]] == [1]

    scaleot("simulate", "--resume", str(run_dir), "--set", "federation.rounds=3")
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["rounds"][0] == stopped["rounds"][0]  # nothing written by round 1 was lost
    assert resumed["zero_shot"] == stopped["zero_shot"]  # zero-shot evaluated once

    final, reference = (
        load_file(str(run_dir / "adapter.safetensors")),
        load_file(str(full_run / "adapter.safetensors")),
    )
    assert final.keys() == reference.keys()
    for key in reference:
        assert final[key].equal(reference[key]), key


def test_eval_run_rows_rebuild_the_runs_plug_in_and_emulator(full_run):
    # `scaleot eval --run` rebuilds the plug-in and emulator fine-tuned models from the run directory alone;
    # scored again on the run's test examples they give the run's own final rows.
    from emulator.evaluation import multiple_choice_accuracy
    from emulator.tasks import load_task
    from simulations.harness import run_model

    config = load_config(full_run / "config.toml")
    test = load_task(config.task, seed=config.seed).test[: config.evaluation.test_limit]
    results = json.loads((full_run / "metrics.json").read_text())["results"]
    for row in ("plug_in", "emulator_ft", "full_zs"):
        model, tokenizer = run_model(full_run, row)
        result = multiple_choice_accuracy(model, tokenizer, test, batch_size=config.evaluation.batch_size)
        assert list(result.correct) == results[row]["correct"], row
