"""`scaleot eval --harness` reads task files as lm-eval's own CLI does and says in one line, before any model
loads, what is wrong with a task it cannot use (issue 23 §4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny

from emulator.data.tasks import synthetic_examples
from simulations.harness import harness_scores, harness_tasks, write_task

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed; pip install -e '.[dev]'")


def split_task(directory: Path, examples) -> Path:
    """The task `write_task` writes, split the way lm-eval's own task folders are: a shared base file pulled
    in with ``include:``, and the prompt built by a Python function named with ``!function``."""
    plain = json.loads(write_task(examples, directory, "plain").read_text())
    (directory / "utils.py").write_text("def doc_to_text(doc):\n    return doc['context']\n")
    base = {k: v for k, v in plain.items() if k not in ("task", "doc_to_text")}
    (directory / "base.yaml").write_text(json.dumps(base, indent=2) + "\n")
    path = directory / "split.yaml"
    path.write_text("include: base.yaml\ntask: split\ndoc_to_text: !function utils.doc_to_text\n")
    return path


def test_a_task_file_with_include_and_function_scores_as_the_same_task_written_plainly(tmp_path):
    from simulations.cli import main

    model, tokenizer = tiny("tiny-llama")
    examples = synthetic_examples(12)
    split = split_task(tmp_path, examples)
    tasks = harness_tasks(f"{tmp_path / 'plain.yaml'},{split}")
    scores = harness_scores(model, tokenizer, tasks, batch_size=4)
    assert scores["split"]["acc"] == scores["plain"]["acc"]
    assert scores["split"]["acc_norm"] == scores["plain"]["acc_norm"]
    assert main(["eval", "--model", "tiny-llama", "--harness", str(split), "--batch-size", "4"]) == 0


def test_a_task_file_lm_eval_cannot_read_is_one_line_naming_it(tmp_path):
    split = split_task(tmp_path, synthetic_examples(4))
    (tmp_path / "utils.py").unlink()
    with pytest.raises(ValueError) as caught:
        harness_tasks(str(split))
    message = str(caught.value)
    assert (
        message.startswith(f"--harness task file {split}: lm-eval cannot read it: ") and "\n" not in message
    )


def test_an_unknown_task_name_is_one_line_with_the_close_names():
    with pytest.raises(ValueError, match=r"^--harness task 'hellaswg' is not an lm-eval task; did you mean "):
        harness_tasks("hellaswg")


def test_a_hub_task_while_offline_is_one_line_before_any_model_loads(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    # Offline, with empty caches (a machine that never downloaded the task).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError) as caught:
        harness_tasks("hellaswag")
    message = str(caught.value)
    assert message.startswith("--harness task hellaswag: lm-eval cannot load it: ") and "\n" not in message
    assert "Hub" in message or "offline" in message.lower()
