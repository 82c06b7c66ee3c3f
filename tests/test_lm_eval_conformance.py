"""Our multiple-choice scores equal lm-evaluation-harness's on the same examples (issue 11, item 2)."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from emulator.evaluation import choice_logliks, multiple_choice_accuracy
from emulator.models import load_model
from emulator.tasks import MCExample, synthetic_examples
from simulations.harness import harness_scores, harness_tasks, write_task

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
    assert len(rows) == 1 and rows[0].startswith("| tiny-llama | scaleot_synthetic | ") and " ± " in rows[0]
