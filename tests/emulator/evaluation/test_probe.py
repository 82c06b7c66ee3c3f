"""Model-stealing probe: it trains every emulator parameter but the embedding, and the report shows it."""

from __future__ import annotations

import json

import pytest
import torch

from emulator.config import EmulatorConfig
from emulator.evaluation.probe import ProbeConfig, steal_, trainable_parameters
from emulator.lm.models import load_model
from emulator.results import MCResult
from emulator.scaleot.assembly import build_emulator
from simulations.run_config import RunConfig
from simulations.studies.compare_report import STEAL_FILE, markdown, stolen_accuracies
from simulations.studies.steal_study import steal_row


def test_probe_trains_everything_but_the_embedding_and_lowers_the_public_loss():
    model, tokenizer = load_model("tiny-llama")
    config = EmulatorConfig.of(method="uniform", alpha=0.5, rank_keep=1.0)
    emulator = build_emulator(model, config, progress=False).model
    before = {n: p.detach().clone() for n, p in emulator.named_parameters()}
    embedding = {id(p) for p in emulator.get_input_embeddings().parameters()}

    result = steal_(emulator, tokenizer, ProbeConfig(steps=30, batch_size=4, seq_len=32, lr=1e-3))

    assert result.loss_end < result.loss_start
    assert result.trained_parameters == sum(p.numel() for p in trainable_parameters(emulator))
    for name, p in emulator.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (id(p) not in embedding), name
        assert not p.requires_grad


@pytest.mark.parametrize(("field", "value"), [("steps", 0), ("seq_len", 1), ("lr", 0.0)])
def test_bad_probe_budgets_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"probe.{field}"):
        ProbeConfig(**{field: value})


def _result(correct: tuple[int, ...]) -> MCResult:
    acc = sum(correct) / len(correct)
    return MCResult(acc, acc, 0.1, 0.1, len(correct), correct, correct)


def test_steal_rows_and_the_comparison_column(tmp_path):
    full, emulator, stolen = _result((1, 1, 1, 0)), _result((1, 0, 0, 0)), _result((1, 1, 0, 0))
    row = steal_row("uniform α=0.5", full, emulator, stolen)
    assert row["recovered"] == pytest.approx(0.5)  # half of the 50-point gap to full zero-shot
    assert row["stolen_minus_full"][0] == pytest.approx(-0.25)

    assert stolen_accuracies(tmp_path) == {}
    (tmp_path / STEAL_FILE).write_text(json.dumps({"rows": [row]}))
    assert stolen_accuracies(tmp_path) == {"uniform α=0.5": stolen.measures()}
    # steal.json written before MCResult had one serialiser held [acc, stderr] pairs.
    old = row | {"full_zs": [0.75, 0.1], "emulator_zs": [0.25, 0.1], "stolen_zs": [0.5, 0.1]}
    (tmp_path / STEAL_FILE).write_text(json.dumps({"rows": [old]}))
    assert stolen_accuracies(tmp_path) == {"uniform α=0.5": {"acc": 0.5, "acc_stderr": 0.1}}
    rows = [{"method": "uniform α=0.5", "stolen_zs": {"acc": 0.5, "acc_stderr": 0.1}} | _EMPTY_ROW]
    table = markdown(rows, RunConfig())
    assert "stolen ZS (probe) |" in table and "| 50.0 ± 10.0 |" in table
    assert "stolen ZS" not in markdown([{"method": "x"} | _EMPTY_ROW], RunConfig())


_EMPTY_ROW = dict.fromkeys(
    ["full_zs", "emulator_zs", "emulator_ft", "plug_in", "privacy_gap", "step_seconds", "peak_memory_mb"]
) | {"bytes_down": 0, "bytes_up": 0, "build_seconds": None}
