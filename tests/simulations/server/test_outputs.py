"""Run outputs: the results rows of metrics.json carry per-example correctness for paired comparisons."""

from __future__ import annotations

import json

from emulator.results import MEASURES, MCResult, privacy_gap
from simulations.server.evaluation import EMULATOR_FT, FULL_ZS, PLUG_IN
from simulations.server.outputs import RunState, write_metrics
from strategies import wire
from strategies.records import RoundRecord, fill_accuracies

ROW = {"acc": 0.5, "acc_stderr": 0.25, "acc_norm": 0.5, "acc_norm_stderr": 0.25, "n": 2}


def evaluated(server_round: int, acc: float | None) -> RoundRecord:
    record = RoundRecord(round=server_round)
    if acc is not None:
        metrics = {f"{wire.PLUG_IN}_{m}": 0.1 for m in MEASURES} | {wire.PLUG_IN_ACC: acc}
        metrics |= {f"{wire.EMULATOR_FT}_{m}": 0.2 for m in MEASURES} | {wire.EVAL_N: 2.0}
        fill_accuracies(record, metrics)
    return record


def test_rows_take_the_last_evaluation_and_carry_per_example_correctness(tmp_path):
    per_example = {
        FULL_ZS: {"correct": [1, 0], "correct_norm": [0, 0]},
        PLUG_IN: {"correct": [1, 1], "correct_norm": [1, 0]},
    }
    state = RunState(zero_shot={FULL_ZS: MCResult.from_row(ROW)}, per_example=per_example)
    state.history = [evaluated(1, 1.0), evaluated(2, None)]  # round 2 skipped evaluation (plug_in_every)
    rows = state.rows()
    assert rows[PLUG_IN].acc == 1.0 and rows[PLUG_IN].correct == (1, 1)
    assert rows[FULL_ZS].correct == (1, 0) and rows[EMULATOR_FT].correct == ()

    write_metrics(tmp_path, state, {}, finished=True)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["results"][PLUG_IN]["correct"] == [1, 1] and "per_example" not in saved
    assert RunState.from_dict(json.loads(json.dumps(state.to_dict()))).per_example == per_example


def test_files_written_before_a_key_rename_are_read_with_the_new_keys(tmp_path):
    # A run directory from before `plugin_acc` became `plug_in_acc` (and `evaluation.plugin_every`
    # `plug_in_every`) can still be resumed, reused by compare and reported.
    from simulations.run_config import RunConfig, check_resumable, load_config, read_run_json

    state = RunState(zero_shot={FULL_ZS: MCResult.from_row(ROW)})
    state.history = [evaluated(1, 0.75)]
    old = json.dumps(state.to_dict()).replace('"plug_in_', '"plugin_')
    assert '"plugin_acc"' in old
    (tmp_path / "state.json").write_text(old)
    restored = RunState.from_dict(read_run_json(tmp_path / "state.json"))
    assert restored.history[0].plug_in_acc == 0.75 and restored.rows()[PLUG_IN].acc == 0.75

    # ... and from before client.checkpoint_middle became checkpoint_blocks.
    config = RunConfig.from_dict({"evaluation": {"plug_in_every": 3}, "client": {"checkpoint_blocks": True}})
    old_json = config.to_json().replace('"plug_in_every"', '"plugin_every"')
    old_toml = config.to_toml().replace("plug_in_every", "plugin_every")
    assert "checkpoint_blocks" in old_toml and "checkpoint_blocks" in old_json
    (tmp_path / "config.json").write_text(old_json.replace("checkpoint_blocks", "checkpoint_middle"))
    (tmp_path / "config.toml").write_text(old_toml.replace("checkpoint_blocks", "checkpoint_middle"))
    check_resumable(tmp_path, config)  # the same config, written under the old keys: no change
    assert load_config(tmp_path / "config.toml") == config


def test_a_result_row_round_trips_and_keeps_the_metrics_json_layout():
    # metrics.json's results rows are MCResult.to_row(): the measures, n, the per-example lists, the spread,
    # in this order (the files of earlier runs have it); from_row reads them back.
    result = MCResult(0.5, 0.25, 0.25, 0.2, 4, (1, 0, 1, 0), (0, 0, 1, 0), (0, 1, 0, 0))
    row = result.to_row()
    assert list(row) == [
        "acc",
        "acc_stderr",
        "acc_norm",
        "acc_norm_stderr",
        "n",
        "correct",
        "correct_norm",
        "predicted",
        "choice_spread",
        "top_choice",
        "top_choice_share",
        "one_answer",
    ]
    assert MCResult.from_row(json.loads(json.dumps(row))) == result
    assert list(MCResult.from_row(result.measures()).to_row()) == list(result.measures())  # lists unknown
    assert privacy_gap(result, MCResult.from_row(ROW)) == 0.0 and privacy_gap(result, 0.25) == 0.25


def test_the_gain_over_zero_shot_is_paired_on_the_same_examples():
    from simulations.server.outputs import gain_line

    def row(correct: list[int]) -> MCResult:
        return MCResult(sum(correct) / len(correct), 0.0, 0.0, 0.0, len(correct), tuple(correct), ())

    zero_shot, plug_in = row([0, 0, 1, 1, 0, 1, 0, 0]), row([1, 0, 1, 1, 1, 1, 0, 1])
    line = gain_line(plug_in, zero_shot)
    # +3 of 8 examples, differences (1,0,0,0,1,0,0,1): mean 0.375, stdev 0.518, se 0.183
    assert line.startswith("Gain = plug-in − full zero-shot = +37.5 ± 18.3 points (paired on the same 8 ")
    assert gain_line(plug_in, None) == "" and gain_line(row([1, 0]), zero_shot) == ""


def test_rows_written_under_their_old_names_are_read_under_todays(tmp_path):
    # Before each results row had one name, state.json and metrics.json keyed rows by their labels
    # ("Emulator-FT") and the round records called the emulator fine-tuned metrics "emulator_acc*": such a
    # run is still resumed, reused by compare and reported with the same numbers.
    from simulations.run_config import read_run_json

    state = RunState(
        zero_shot={FULL_ZS: MCResult.from_row(ROW)}, per_example={EMULATOR_FT: {"correct": [0, 1]}}
    )
    state.history = [evaluated(1, 0.75)]
    old = json.dumps(state.to_dict())
    for row, label in ((FULL_ZS, "Full-ZS"), (EMULATOR_FT, "Emulator-FT")):
        old = old.replace(f'"{row}"', f'"{label}"')
    old = old.replace('"emulator_ft_acc', '"emulator_acc')
    assert '"Full-ZS"' in old and '"emulator_acc_stderr"' in old and "emulator_ft" not in old
    (tmp_path / "state.json").write_text(old)
    restored = RunState.from_dict(read_run_json(tmp_path / "state.json"))
    assert (
        restored.history[0].emulator_ft_acc == 0.2
        and restored.history[0].privacy_gap == state.history[0].privacy_gap
    )
    assert restored.rows() == state.rows()
