"""Run outputs: the results rows of metrics.json carry per-example correctness for paired comparisons."""

from __future__ import annotations

import json

from simulations.outputs import RunState, write_metrics
from simulations.server_eval import EMULATOR_FT, FULL_ZS, PLUG_IN
from strategies import wire
from strategies.records import RoundRecord, fill_accuracies

ROW = {"acc": 0.5, "acc_stderr": 0.25, "acc_norm": 0.5, "acc_norm_stderr": 0.25, "n": 2}


def evaluated(server_round: int, acc: float | None) -> RoundRecord:
    record = RoundRecord(round=server_round)
    if acc is not None:
        metrics = {f"{wire.PLUGIN}_{m}": 0.1 for m in wire.MEASURES} | {wire.PLUGIN_ACC: acc}
        metrics |= {f"{wire.EMULATOR}_{m}": 0.2 for m in wire.MEASURES} | {wire.EVAL_N: 2.0}
        fill_accuracies(record, metrics)
    return record


def test_rows_take_the_last_evaluation_and_carry_per_example_correctness(tmp_path):
    per_example = {
        FULL_ZS: {"correct": [1, 0], "correct_norm": [0, 0]},
        PLUG_IN: {"correct": [1, 1], "correct_norm": [1, 0]},
    }
    state = RunState(zero_shot={FULL_ZS: ROW}, per_example=per_example)
    state.history = [evaluated(1, 1.0), evaluated(2, None)]  # round 2 skipped evaluation (plugin_every)
    rows = state.rows()
    assert rows[PLUG_IN]["acc"] == 1.0 and rows[PLUG_IN]["correct"] == [1, 1]
    assert rows[FULL_ZS]["correct"] == [1, 0] and "correct" not in rows[EMULATOR_FT]

    write_metrics(tmp_path, state, {}, finished=True)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["results"][PLUG_IN]["correct"] == [1, 1] and "per_example" not in saved
    assert RunState.from_dict(json.loads(json.dumps(state.to_dict()))).per_example == per_example
