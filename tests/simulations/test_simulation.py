"""End to end: `scaleot simulate` on tiny.toml, on Flower's simulation runtime with the real Ray backend and
on the in-process backend.

conftest's ``full_run`` is the default tier's one Ray simulation: the uninterrupted 3-round run with one
client that raises (rounds, rows, bytes, fault tolerance, outputs). The same options in-process
(``inprocess_full_run``) must train the same adapter and score the same rows: what lets every other end-to-end
test run without Ray. A run stopped after round 1 then resumed (in-process) must reach that adapter too.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import INPROCESS, assert_same_adapter, sets
from conftest import TINY_CONFIG as CONFIG
from flwr.app import ArrayRecord
from safetensors.torch import load_file

from simulations.run_config import load_config

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
    from simulations.server.tracking import read_scalars

    metrics = json.loads((full_run / "metrics.json").read_text())
    scalars = read_scalars(full_run / "tensorboard")
    assert scalars["train/loss"] == pytest.approx({r["round"]: r["train_loss"] for r in metrics["rounds"]})
    assert set(scalars["eval/plug_in_acc"]) == {1, 2, 3}


def test_the_inprocess_backend_trains_what_ray_trains(full_run, inprocess_full_run):
    # Same config and seed: the same sampled clients, the same dropped one, the same adapter to the bit, the
    # same rows (to each test example). Only placement and timing may differ.
    ray, inprocess = (load_file(str(d / "adapter.safetensors")) for d in (full_run, inprocess_full_run))
    assert ray.keys() == inprocess.keys()
    for key in ray:
        assert ray[key].equal(inprocess[key]), key
    ray, inprocess = (json.loads((d / "metrics.json").read_text()) for d in (full_run, inprocess_full_run))
    assert inprocess["results"] == ray["results"] and inprocess["zero_shot"] == ray["zero_shot"]
    same = [
        *(
            "round",
            "train_loss",
            "plug_in_acc",
            "plug_in_acc_stderr",
            "emulator_ft_acc",
            "emulator_ft_acc_stderr",
        ),
        *("sampled", "replied", "rejected", "missing", "aggregated", "empty", "sampled_partitions"),
        *("bytes_sent", "bytes_received", "bytes_per_client", "evaluation"),
    ]
    for a, b in zip(ray["rounds"], inprocess["rounds"], strict=True):
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
        # Node ids are the runtime's own; each rejection is the client that raised, on both.
        assert len(a["rejections"]) == len(b["rejections"])
        assert all("fails on purpose" in r for r in a["rejections"] + b["rejections"])
    assert load_config(inprocess_full_run / "config.toml").simulation.backend == "inprocess"


def test_a_run_stopped_after_round_one_resumes_to_the_same_adapter(
    inprocess_full_run, failing_partition, tmp_path
):
    from simulations.cli import main

    run_dir = tmp_path / "stopped"
    one_round = sets(f"federation.fail_partitions=[{failing_partition}]", "federation.rounds=1")
    assert main(["simulate", "--config", CONFIG, *INPROCESS, *one_round, "--out", str(run_dir)]) == 0
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in stopped["rounds"]] == [1]

    assert main(["simulate", "--resume", str(run_dir), *sets("federation.rounds=3")]) == 0
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["rounds"][0] == stopped["rounds"][0]  # nothing written by round 1 was lost
    assert resumed["zero_shot"] == stopped["zero_shot"]  # zero-shot evaluated once

    assert_same_adapter(run_dir, inprocess_full_run)


def test_eval_run_rows_rebuild_the_runs_plug_in_and_emulator(full_run):
    # `scaleot eval --run` rebuilds the plug-in and emulator fine-tuned models from the run directory alone;
    # scored again on the run's test examples they give the run's own final rows.
    from emulator.data.tasks import load_task
    from emulator.evaluation.scoring import multiple_choice_accuracy
    from simulations.harness import run_model

    config = load_config(full_run / "config.toml")
    test = load_task(config.task, seed=config.seed).test[: config.evaluation.test_limit]
    results = json.loads((full_run / "metrics.json").read_text())["results"]
    for row in ("plug_in", "emulator_ft", "full_zs"):
        model, tokenizer = run_model(full_run, row)
        result = multiple_choice_accuracy(model, tokenizer, test, batch_size=config.evaluation.batch_size)
        assert list(result.correct) == results[row]["correct"], row


def test_a_resume_that_trains_further_rounds_removes_the_earlier_exports(tmp_path, caplog):
    import logging

    from simulations.cli import main

    run_dir = tmp_path / "lora"
    lora = sets("adapter.mode=lora", "federation.rounds=1")
    assert main(["simulate", "--config", CONFIG, *INPROCESS, *lora, "--out", str(run_dir)]) == 0
    assert (run_dir / "plug-in").is_dir() and (run_dir / "peft-adapter").is_dir()
    before = json.loads((run_dir / "metrics.json").read_text())

    more = sets("federation.rounds=2", "output.export_plug_in=false")
    with caplog.at_level(logging.INFO, logger="simulations.server.export_run"):
        assert main(["simulate", "--resume", str(run_dir), *more]) == 0
    # Round 1's exports would now be an older model than adapter.safetensors and report.md describe.
    assert not (run_dir / "plug-in").exists() and not (run_dir / "peft-adapter").exists()
    assert (
        f"removed plug-in/ and peft-adapter/ of an earlier round from {run_dir} before training further "
        f"rounds; rewrite them with `scaleot export {run_dir}`"
    ) in caplog.text
    # Nothing else round 1 wrote is lost.
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["status"] == "finished" and [r["round"] for r in after["rounds"]] == [1, 2]
    assert after["rounds"][0] == before["rounds"][0] and after["zero_shot"] == before["zero_shot"]
    assert {p.name for p in (run_dir / "checkpoint").glob("round-*")} == {"round-0001", "round-0002"}

    assert main(["export", str(run_dir)]) == 0  # what the log line says rewrites them
    assert (run_dir / "plug-in").is_dir() and (run_dir / "peft-adapter").is_dir()


def test_a_resume_that_fails_mid_way_records_the_failure_under_the_config_it_ran(tmp_path, capsys):
    from simulations.cli import main

    run_dir = tmp_path / "run"
    assert (
        main(
            ["simulate", "--config", CONFIG, *INPROCESS, *sets("federation.rounds=1"), "--out", str(run_dir)]
        )
        == 0
    )
    # A real write fault in the resume's first round: a file where round 2's checkpoint directory goes.
    blocker = run_dir / "checkpoint" / "round-0002"
    blocker.write_text("in the way")
    assert main(["simulate", "--resume", str(run_dir), *sets("federation.rounds=2")]) == 1
    reason = f"FileWriteError: cannot write {blocker}: Not a directory"
    assert capsys.readouterr().err.splitlines()[-1] == f"error: cannot write {blocker}: Not a directory"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["reason"], metrics["rounds_done"]) == ("failed", reason, 1)
    # The config files and metrics.json agree: the resume asked for 2 rounds and did 1.
    assert metrics["config"]["federation"]["rounds"] == 2
    assert load_config(run_dir / "config.toml").federation.rounds == 2
    assert json.loads((run_dir / "config.json").read_text())["federation"]["rounds"] == 2
    assert f"**Run failed:** {reason}." in (run_dir / "report.md").read_text()

    # A resume refused before it is under way (no intact checkpoint left) leaves the directory's config alone.
    blocker.unlink()
    adapter = run_dir / "checkpoint" / "round-0001" / "adapter.safetensors"
    intact = adapter.read_bytes()
    adapter.write_bytes(intact[:-8])
    assert main(["simulate", "--resume", str(run_dir), *sets("federation.rounds=3")]) == 2
    assert load_config(run_dir / "config.toml").federation.rounds == 2
    assert json.loads((run_dir / "metrics.json").read_text())["reason"] == reason

    # With the fault gone, the failed run resumes to its end.
    (run_dir / "checkpoint" / "refused-round-0001").rename(run_dir / "checkpoint" / "round-0001")
    adapter.write_bytes(intact)
    assert main(["simulate", "--resume", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and "reason" not in metrics and metrics["rounds_done"] == 2
