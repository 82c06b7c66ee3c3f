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
