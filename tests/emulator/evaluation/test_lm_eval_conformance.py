"""Our multiple-choice scores equal lm-evaluation-harness's on the same examples (issue 11, item 2), and the
papers' tasks, copied from the offline wheel into the hub's layout, get our prompts from lm-eval's own task
files (issue 20; ``simulations/studies/harness_agreement.py``)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import write_olmo_wheel
from transformers import AutoTokenizer

from emulator import assets
from emulator.data.paper_tasks import PAPER_TASKS, SOURCE_ENV
from emulator.data.tasks import MCExample, load_task, synthetic_examples
from emulator.evaluation.scoring import choice_logliks, multiple_choice_accuracy
from emulator.lm.models import load_model
from simulations.harness import harness_scores, harness_tasks, write_task
from simulations.studies.harness_agreement import (
    PromptCheck,
    compare_prompts,
    hub_features,
    lm_eval_prompts,
    main,
    parse_args,
    scored_documents,
    write_copy,
)

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is not installed; pip install -e '.[dev]' installs it"
)

# Varied choice lengths (acc and acc_norm pick differently), multi-token choices, and a context whose trailing
# space lm-eval moves into the continuation.
_EXTRA = [
    MCExample("The capital of France is", (" Paris", " a small village in the south", " Rome"), 0),
    MCExample("Pick one: ", (" x", " yyyyyyyy"), 1),
    MCExample("2 + 2 =", (" 4", " four", " 22"), 0),
]


def _discriminating(model, tokenizer, pool: list[MCExample], n: int, chunk: int = 25) -> list[MCExample]:
    """The first ``n`` examples of ``pool`` on which acc_norm with the delimiter counted (our old definition)
    and without it (lm-eval's) pick different choices, so that the test tells the two apart. The pool is
    scored a chunk at a time up to the n-th: on SmolLM2 the whole pool took 47 s on a busy 2-core machine,
    and its first chunk holds the 4 the test needs."""
    picked = []
    for start in range(0, len(pool), chunk):
        part = pool[start : start + chunk]
        for ex, scores in zip(part, choice_logliks(model, tokenizer, part), strict=True):
            with_delimiter = [s / len(c) for s, c in zip(scores, ex.choices, strict=True)]
            without = [s / len(c.lstrip()) for s, c in zip(scores, ex.choices, strict=True)]
            if max(range(len(scores)), key=with_delimiter.__getitem__) != max(
                range(len(scores)), key=without.__getitem__
            ):
                picked.append(ex)
        if len(picked) >= n:
            return picked[:n]
    raise AssertionError(f"only {len(picked)} discriminating examples in the pool")


def _compare(model, tokenizer, directory) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    rng = random.Random(0)
    words = ["a", "an", "cat", "sat", "on", "the", "mat", "x", "zebra", "7", "dog", "ran", "far", "q"]
    pool = [
        MCExample(
            f"Item {i}:", tuple(" " + " ".join(rng.sample(words, rng.randint(1, 3))) for _ in "abcd"), 0
        )
        for i in range(200)
    ]
    examples = synthetic_examples(20) + _EXTRA + _discriminating(model, tokenizer, pool, 4)
    ours = multiple_choice_accuracy(model, tokenizer, examples, batch_size=8)
    task = harness_tasks(str(write_task(examples, directory, "conformance")))
    theirs = harness_scores(model, tokenizer, task, batch_size=8, log_samples=True)["conformance"]
    assert (ours.acc, ours.acc_norm) == pytest.approx((theirs["acc"], theirs["acc_norm"]), abs=1e-12)
    # Per example and per choice too: equal means could hide compensating differences.
    assert [int(s["acc"]) for s in theirs["samples"]] == list(ours.correct)
    assert [int(s["acc_norm"]) for s in theirs["samples"]] == list(ours.correct_norm)
    requests = [
        Instance("loglikelihood", {}, (ex.context, choice), 0) for ex in examples for choice in ex.choices
    ]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    their_logliks = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    our_logliks = [s for scores in choice_logliks(model, tokenizer, examples) for s in scores]
    assert our_logliks == pytest.approx(their_logliks, abs=1e-4)


def test_scores_equal_lm_evals_with_a_tokenizer_that_adds_bos(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    # SmolLM2's tokenizer set to add BOS, as Llama's, Gemma's and Mistral's tokenizers do.
    bos = AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_bos_token=True)
    assert bos("a")["input_ids"][0] == bos.bos_token_id
    _compare(model, bos, tmp_path)


@pytest.mark.slow
def test_scores_equal_lm_evals_on_smollm2(tmp_path):
    model, tokenizer = load_model("smollm2-135m")
    _compare(model, tokenizer, tmp_path)


def test_write_task_rejects_mixed_delimiters(tmp_path):
    with pytest.raises(ValueError, match=r"2 different delimiters"):
        write_task([MCExample("c", (" a", "\nb"), 0)], tmp_path, "mixed")


def test_eval_harness_scores_the_shipped_local_task(capsys):
    from simulations.cli import main

    assert main(["eval", "--model", "tiny-llama", "--harness", "docs/lm-eval/scaleot_synthetic.yaml"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny-llama |")]
    assert (
        len(rows) == 1 and rows[0].startswith("| tiny-llama | scaleot_synthetic | 20 | ") and " ± " in rows[0]
    )
    # The file holds 20 examples: a larger --limit scores those 20, and the n says so.
    argv = ["eval", "--model", "tiny-llama", "--harness", "docs/lm-eval/scaleot_synthetic.yaml", "--limit"]
    assert main([*argv, "40"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny-llama |")]
    assert rows[0].startswith("| tiny-llama | scaleot_synthetic | 20 (all; --limit 40) | ")
    assert main([*argv, "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny-llama |")]
    assert rows[0].startswith("| tiny-llama | scaleot_synthetic | 5 | ")


# ---------------------------------------------- the papers' tasks through lm-eval's own task files (issue 20)

_WORDS = "red blue green stone river cloud paper light music table chair bread horse water apple".split()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _wheel_doc(task: str, rng: random.Random, i: int, ending_space: str = "") -> dict:
    """One generated document of ``task`` shaped as the wheel's (OLMES's fields, prompt, choices, gold)."""
    n_choices = {"piqa": 2, "arc_easy": 3 + i % 3}.get(task, 4)  # ARC has 3 or 5 choices on a few questions
    texts = [f"{_words(rng, 1 + k)} {k}" for k in range(n_choices)]
    gold = rng.randrange(n_choices)
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        query = f"Question: {_words(rng, 6)} {i}?\nAnswer:"
        return {"id": f"q{i}", "query": query, "choices": texts, "gold": gold}
    if task == "piqa":
        goal = f"{_words(rng, 5)} {i}"
        row = {"goal": goal, "sol1": texts[0], "sol2": texts[1], "label": gold, "index": i}
        return row | {"query": f"Goal: {goal}\nAnswer:", "choices": texts, "gold": gold}
    if task == "hellaswag":  # OLMES's query is already cleaned; a second ": " tests where the label ends
        query = f"Making tea: step {i}: {_words(rng, 5)}. The man"
        return {"ind": i, "query": query, "choices": [ending_space + t for t in texts], "gold": gold}
    support = ["", f" {_words(rng, 8)}.", f"{_words(rng, 8)}."][i % 3]  # none, a leading space, plain
    question = f"{_words(rng, 5)} {i}?"
    distractors = {f"distractor{k + 1}": t for k, t in enumerate(texts[:3])}
    return {"question": question, **distractors, "correct_answer": texts[3], "support": support} | {
        "index": i,
        "source": "",
        "query": question,
        "choices": texts,
        "gold": 3,
    }


def _paper_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending_space: str = "") -> None:
    """A generated wheel with every request file the paper tasks read: 12 documents each, 24 in SciQ's one."""
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    rng, files = random.Random(0), {}
    for task, spec in PAPER_TASKS.items():
        for folder in sorted(set(spec.wheel_folders.values())):
            n = 24 if spec.derive_from else 12
            files[(spec.wheel_task, folder)] = [_wheel_doc(task, rng, i, ending_space) for i in range(n)]
    write_olmo_wheel(tmp_path / assets.OLMO.filename, files, monkeypatch)


@pytest.mark.parametrize("task", sorted(PAPER_TASKS))
def test_a_hub_copy_of_our_test_examples_gets_our_prompts_from_lm_evals_own_task(task, tmp_path, monkeypatch):
    from datasets import load_dataset

    _paper_wheel(tmp_path, monkeypatch)
    copy = write_copy(task, 8, tmp_path / "copies")
    assert copy.examples == load_task(task).test[:8] and len(copy.examples) == 8
    # The copy is a hub-layout dataset in the hub dataset's schema, as datasets loads it.
    rows = load_dataset(str(copy.copy_dir), PAPER_TASKS[task].hub_config)[copy.split]
    assert rows.num_rows == 8 and rows.features == hub_features(task)
    # lm-eval's own task file builds, from it, our (context, continuation) pairs and gold index, example by
    # example.
    assert compare_prompts(lm_eval_prompts(copy), copy.examples) == PromptCheck(8, 8)


def test_the_study_scores_arc_easy_and_piqa_as_lm_eval_does(tmp_path, monkeypatch, capsys):
    _paper_wheel(tmp_path, monkeypatch)
    out = tmp_path / "out"
    main(["--tasks", "arc_easy", "piqa", "--limit", "8", "--model", "tiny-llama", "--out", str(out)])
    table = capsys.readouterr().out
    assert (out / "agreement.md").read_text() == table and "first prompt difference" not in table
    cells = [
        [c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line[:2] == "| "
    ]
    rows = {row[0]: row[1:] for row in cells}
    for task in ("arc_easy", "piqa"):
        n, ours_acc, ours_norm, their_acc, their_norm, *same, whole, _, _ = rows[task]
        assert (n, ours_acc, ours_norm) == ("8", their_acc, their_norm)
        assert same == ["8/8"] * 3 and whole == "12/12"  # PIQA's scored split is validation: 12 documents


def test_hellaswag_endings_that_start_with_a_space_get_lm_evals_prompts(tmp_path, monkeypatch):
    # The real wheel keeps a leading space on 4,835 of HellaSwag's 10,042 validation endings; lm-eval strips
    # it, and so do we.
    _paper_wheel(tmp_path, monkeypatch, ending_space=" ")
    copy = write_copy("hellaswag", None, tmp_path / "copies")
    assert compare_prompts(lm_eval_prompts(copy), copy.examples) == PromptCheck(12, 12)


def test_the_study_refuses_bad_input_in_one_line(monkeypatch):
    with pytest.raises(ValueError, match=r"^--limit=0 must be at least 1$"):
        parse_args(["--limit", "0"])
    monkeypatch.setenv(SOURCE_ENV, "hub")
    with pytest.raises(ValueError, match=r"^SCALEOT_TASK_SOURCE='hub': this study copies the wheel's"):
        scored_documents("arc_easy", 8)
