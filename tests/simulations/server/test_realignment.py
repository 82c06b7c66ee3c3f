"""Re-alignment in a whole run (tiny.toml, in-process backend): recorded each round, its harmonizers sent and
counted from round 2 on, and a resumed run sends (and so trains to) what an uninterrupted one does."""

from __future__ import annotations

import json

import pytest
from conftest import INPROCESS, TINY_CONFIG, assert_same_adapter, sets
from flwr.app import ArrayRecord

from emulator.scaleot.bundle import load_emulator
from emulator.scaleot.realign import harmonizer_state
from simulations.cli import main

pytestmark = pytest.mark.slow

REALIGN = sets("federation.realign_steps=2", "evaluation.test_limit=8", "output.export_plug_in=false")


def rounds(run_dir) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["rounds"]


def test_realignment_is_recorded_its_bytes_counted_and_a_resumed_run_trains_the_same(tmp_path):
    run_dir = tmp_path / "realign"
    assert main(["simulate", "--config", TINY_CONFIG, *INPROCESS, *REALIGN, "--out", str(run_dir)]) == 0
    first, second = rounds(run_dir)
    for record in (first, second):
        assert record["realign"]["steps"] == 2 and record["realign"]["seconds"] > 0
        assert 0 < record["realign"]["loss_before"] and 0 < record["realign"]["loss_after"]
    # Round 1 sends the adapter alone; round 2 the adapter and round 1's harmonizers, to each sampled client.
    bundle = json.loads((run_dir / "metrics.json").read_text())["bundle"]["path"]
    emulator, _ = load_emulator(bundle)
    harmonizer_bytes = ArrayRecord(harmonizer_state(emulator.model, emulator.layer_map)).count_bytes()
    assert harmonizer_bytes > 0 and (first["harmonizer_bytes"], second["harmonizer_bytes"]) == (
        0,
        harmonizer_bytes,
    )
    assert first["sampled"] == second["sampled"] == 2
    assert second["bytes_per_client"] == first["bytes_per_client"] + harmonizer_bytes
    assert second["bytes_sent"] == first["bytes_sent"] + 2 * harmonizer_bytes

    stopped = tmp_path / "stopped"
    one = sets("federation.rounds=1")
    assert main(["simulate", "--config", TINY_CONFIG, *INPROCESS, *REALIGN, *one, "--out", str(stopped)]) == 0
    assert main(["simulate", "--resume", str(stopped), *sets("federation.rounds=2")]) == 0
    assert rounds(stopped)[1]["harmonizer_bytes"] == harmonizer_bytes
    assert rounds(stopped)[1]["realign"]["loss_before"] == second["realign"]["loss_before"]
    assert_same_adapter(stopped, run_dir)
