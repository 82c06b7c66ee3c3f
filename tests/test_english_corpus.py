"""The BIG-bench English corpus: selection, determinism, and that the evaluated task never enters it.

The fast tests build a small archive with the real layout (``bigbench-1.0.0/bigbench/benchmark_tasks/...``)
in a temporary cache; the slow one checks the three evidence tasks against the real cached archive.
"""

from __future__ import annotations

import json
import zlib

import pytest
from conftest import write_bigbench_archive

from emulator.english_corpus import bigbench_corpus, corpus_file, sentence_hashes, task_texts
from emulator.tasks import bigbench_archive
from simulations.config import RunConfig

PROSE = "The old miller walked slowly along the river bank while the sun went down behind the hills"
COPIED = "Every morning the baker opened his shop early and sold warm bread to the people of the town"


def _train_name(stem: str) -> str:
    """A task name that lands in the train split (CRC32 not divisible by 10)."""
    return next(f"{stem}{i}" for i in range(100) if zlib.crc32(f"{stem}{i}".encode()) % 10)


def _task(sentences: list[str], keywords: tuple[str, ...] = ()) -> dict:
    return {
        "keywords": list(keywords),
        "examples": [{"input": s + ".", "target_scores": {"yes": 1, "no": 0}} for s in sentences],
    }


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    stories, quiz, french = _train_name("stories"), _train_name("quiz"), _train_name("french")
    tasks = {
        stories: _task([f"{PROSE} number {i}" for i in range(3)]),
        f"{quiz}/bakery": _task([f"{COPIED} again and again {i}" for i in range(2)]),
        quiz: _task([]),
        french: _task(
            ["Le vieux meunier marchait lentement le long de la rivière ce soir"], ("non-English",)
        ),
    }
    write_bigbench_archive(tasks)
    return {"stories": stories, "quiz": quiz, "french": french}


def test_corpus_keeps_english_prose_with_answers_and_is_cached_and_deterministic(archive):
    train = bigbench_corpus("train")
    assert f"{PROSE} number 0. yes" in train and COPIED in train
    assert "meunier" not in train  # a non-English task is left out
    assert corpus_file().is_file()
    assert bigbench_corpus("train") == train and bigbench_corpus("validation") == ""


def test_the_evaluated_task_and_its_siblings_are_left_out(archive):
    text = bigbench_corpus("train", exclude=f"bigbench:{archive['quiz']}/bakery")
    assert COPIED not in text and PROSE in text
    assert not sentence_hashes([text]) & sentence_hashes(task_texts(_task([f"{COPIED} again and again 0"])))


def test_a_task_copied_into_another_task_refuses_the_run(archive):
    # The evaluated task's text also sits in another task: leaving the task out by name is not enough.
    bigbench_corpus("train")  # builds the cache from the archive
    corpus_file().write_text(json.dumps({_train_name("other"): [f"{PROSE} number 1. yes"]}))
    with pytest.raises(ValueError, match=r"holds 1 sentences of the evaluated task bigbench:stories\d+;"):
        bigbench_corpus("train", exclude=archive["stories"])


def test_a_run_leaves_its_own_task_out_of_the_corpus():
    task = "bigbench:goal_step_wikihow/step_inference"
    assert RunConfig(task=task).emulator.data.corpus_exclude == "goal_step_wikihow/step_inference"
    assert RunConfig(task="synthetic").emulator.data.corpus_exclude == ""
    with pytest.raises(ValueError, match="emulator.corpus_exclude='strategyqa'.*empty or the run's task"):
        RunConfig.from_dict({"task": task, "emulator": {"corpus_exclude": "strategyqa"}})


@pytest.mark.slow
@pytest.mark.parametrize("task", ["goal_step_wikihow/step_inference", "fact_checker/fever", "strategyqa"])
def test_real_corpus_never_contains_the_evidence_tasks(task):
    if not bigbench_archive().is_file():
        pytest.skip("the BIG-bench archive is not cached (make install)")
    text = bigbench_corpus("train", exclude=task) + bigbench_corpus("validation", exclude=task)
    assert len(text) > 1_000_000
    from emulator.tasks import read_bigbench_task

    assert not sentence_hashes([text]) & sentence_hashes(task_texts(read_bigbench_task(task)))
