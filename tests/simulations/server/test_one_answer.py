"""A model that gives one answer to everything is flagged; partitions can skew something other than it."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from conftest import tiny

from clients.partition import partition
from emulator.config import AdapterConfig
from emulator.data.tasks import MCExample, load_task
from emulator.evaluation.scoring import multiple_choice_accuracy
from emulator.results import MCResult, choice_spread
from simulations.run_config import load_config
from simulations.server.evaluation import FULL_ZS, PLUG_IN, ServerEvaluator
from simulations.server.outputs import RunState, write_report
from simulations.studies.compare_report import markdown, method_row
from strategies.records import RoundRecord

TINY_TOML = Path(__file__).resolve().parents[3] / "simulations" / "configs" / "tiny.toml"


def fixed_order_task(n: int = 400) -> list[MCExample]:
    """Two choices always in the same order (" yes", " no"); the label is the index of the right one, and the
    context's length has nothing to do with it."""
    rng = random.Random(0)
    return [
        MCExample(f"Claim {i}: " + "word " * rng.randint(1, 40) + "True?", (" yes", " no"), rng.randint(0, 1))
        for i in range(n)
    ]


def label_shares(examples: list[MCExample], clients: int, scheme: str) -> list[float]:
    parts = [partition(examples, clients, c, scheme, dirichlet_alpha=0.1, seed=0) for c in range(clients)]
    return [sum(ex.label for ex in part) / len(part) for part in parts]


def test_choice_spread_flags_more_than_ninety_percent_on_one_position():
    flagged = choice_spread([0] * 91 + [1] * 9)
    assert flagged == {
        "choice_spread": [0.91, 0.09],
        "top_choice": 0,
        "top_choice_share": 0.91,
        "one_answer": True,
    }
    assert choice_spread([2] * 90 + [0] * 10)["one_answer"] is False  # 90 % exactly is not flagged
    assert choice_spread([3, 1, 3])["choice_spread"] == [0.0, 1 / 3, 0.0, 2 / 3]
    assert choice_spread([]) == {}


def test_a_collapsed_model_after_a_label_split_is_flagged_in_report_and_comparison(tmp_path):
    # The input: a two-choice task with choices in fixed order, split by Dirichlet over the label.
    examples = fixed_order_task()
    assert max(max(s, 1 - s) for s in label_shares(examples, 4, "dirichlet")) > 0.9  # a split by class
    test = examples[:100]
    predicted = [0] * len(test)  # the collapsed model: choice 0 for every test example
    correct = [int(p == ex.label) for p, ex in zip(predicted, test, strict=True)]
    acc = sum(correct) / len(test)
    measures = {"plug_in_acc": acc, "plug_in_acc_stderr": 0.05, "plug_in_acc_norm": acc}
    record = RoundRecord(round=3, plug_in_acc=acc, evaluation=measures | {"plug_in_acc_norm_stderr": 0.05})
    zero_shot = {"acc": 0.5, "acc_stderr": 0.05, "acc_norm": 0.5, "acc_norm_stderr": 0.05, "n": len(test)}
    state = RunState(
        zero_shot={FULL_ZS: MCResult.from_row(zero_shot)},
        history=[record],
        per_example={
            PLUG_IN: {"correct": correct, "correct_norm": correct, "predicted": predicted},
            FULL_ZS: {"correct": correct, "correct_norm": correct, "predicted": [i % 2 for i in range(100)]},
        },
    )
    rows = {name: row.to_row() for name, row in state.rows().items()}
    assert rows[PLUG_IN]["one_answer"] and rows[PLUG_IN]["choice_spread"] == [1.0]
    assert rows[FULL_ZS]["one_answer"] is False and rows[FULL_ZS]["choice_spread"] == [0.5, 0.5]

    write_report(tmp_path, state, "collapsed")
    report = (tmp_path / "report.md").read_text()
    assert "| Plug-in |" in report and "| 0 (100) ⚠ one answer |" in report
    assert "⚠ Plug-in picks choice 0 for 100 % of the test examples" in report
    assert "| Full-ZS |" in report and report.count("⚠ one answer") == 1

    metrics = {"results": rows, "config": {"emulator": {"alpha": 0.5, "rank_keep": 1.0}}, "rounds": []}
    row = method_row("scaleot", "scaleot", metrics, None)
    assert row["plug_in"]["one_answer"] is True
    table = markdown([row], load_config(TINY_TOML))
    assert f"{100 * acc:.1f} ± 5.0 ⚠" in table and "one choice position takes more than 90%" in table


def test_dirichlet_length_skews_inputs_and_leaves_answer_positions():
    examples = fixed_order_task()
    shares = label_shares(examples, 4, "dirichlet-length")
    assert all(0.25 <= s <= 0.75 for s in shares), shares  # every client keeps both answers
    parts = [partition(examples, 4, c, "dirichlet-length", dirichlet_alpha=0.1, seed=0) for c in range(4)]
    mean_length = [sum(len(ex.context) for ex in part) / len(part) for part in parts]
    assert max(mean_length) > 1.3 * min(mean_length)  # but their inputs differ
    assert sorted(ex.context for part in parts for ex in part) == sorted(ex.context for ex in examples)
    assert load_config(TINY_TOML, ["federation.partition='dirichlet-length'"]).federation.partition


def test_a_real_evaluation_records_its_predictions_and_logs_a_collapse(tokenizer, caplog):
    model = tiny("tiny-llama")[0]
    examples = load_task("synthetic").test[:24]
    result = multiple_choice_accuracy(model, tokenizer, examples)
    assert len(result.predicted) == result.n == 24
    assert all(
        c == int(p == ex.label) for c, p, ex in zip(result.correct, result.predicted, examples, strict=True)
    )
    assert abs(sum(choice_spread(result.predicted)["choice_spread"]) - 1) < 1e-9

    # A random model scoring a one-token choice against a twelve-token one picks the short one every time.
    long = " the quick brown fox jumps over the lazy dog again and again"
    skewed = [MCExample(f"Question {i}:", (" a", long), i % 2) for i in range(20)]
    evaluator = ServerEvaluator(model, model, {}, tokenizer, skewed, AdapterConfig(), emulator_is_full=True)
    with caplog.at_level(logging.WARNING, logger="simulations.server.evaluation"):
        evaluator.zero_shot()
    assert "Full-ZS picks choice 0 for 100 % of the test examples: one answer to everything" in caplog.text
    assert evaluator.per_example[FULL_ZS]["predicted"] == [0] * 20
