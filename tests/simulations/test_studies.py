"""The measurement scripts of simulations/studies run end to end on a tiny model (they are not tests
themselves: these only check that they run and write what they promise)."""

from __future__ import annotations

import json
import math

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
