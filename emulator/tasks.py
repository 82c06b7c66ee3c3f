"""Multiple-choice tasks: one registry for BIG-bench, hub datasets and a synthetic task for tests.

Every task becomes a list of ``MCExample`` (a context that ends where the answer starts, the candidate
continuations, the index of the correct one) split into train / validation / test. Clients train on the
correct continuation; evaluation scores every continuation by log-likelihood, as lm-evaluation-harness does.

Task names:
- ``bigbench:<task>[/<subtask>]``: any BIG-bench JSON task whose examples carry ``target_scores``, read from
  the ``bigbench`` sdist in the cache (works offline). Prompts follow BIG-bench's own formatting
  (``task_prefix``, ``example_input_prefix``, ``example_output_prefix``), except that choices are appended to
  the input only where the task.json asks for it explicitly (see ``bigbench_examples``).
- ``piqa``, ``arc_easy``, ``arc_challenge``, ``sciq``, ``openbookqa``: hub datasets stored as parquet (need
  network) with Offsite-Tuning's prompt templates and lm-evaluation-harness's test splits.
- ``synthetic``: a copy task ("Word: apple. Repeat:" -> " apple") a tiny model learns in a few steps.

Split sizes where a task has no fixed split (BIG-bench, synthetic): shuffle with ``seed``, then validation =
min(100, n // 10) examples, test = ``test_size`` or min(500, n // 4), train = the rest. Validation comes first
in the shuffled order, so a larger ``test_size`` keeps the validation set and extends the test set.
"""

from __future__ import annotations

import difflib
import json
import logging
import random
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emulator.models import cache_dir

log = logging.getLogger(__name__)

BIGBENCH_PREFIX = "bigbench:"
BIGBENCH_ARCHIVE = "bigbench-1.0.0.tar.gz"
_ARCHIVE_TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
# Good BIG-bench tasks for a 135M model (design.md §4); shown in help and error messages.
BIGBENCH_SUGGESTED = (
    "bigbench:goal_step_wikihow/step_inference",
    "bigbench:goal_step_wikihow/goal_inference",
    "bigbench:fact_checker/fever",
    "bigbench:strategyqa",
    "bigbench:timedial",
)
# BIG-bench's JsonTask shuffles the choices it appends to the input with this fixed seed.
_BIGBENCH_CHOICE_SEED = 42
# BIG-bench appends the choices to the input unless a task says otherwise; we only where a task says so: on
# goal_step_wikihow/step_inference, SmolLM2-135M scores 0.28 with the choices appended and 0.41 without
# (200 test examples), and the prompt is three times longer.
_APPEND_CHOICES_DEFAULT = False
_MAX_TEST, _MAX_VALIDATION = 500, 100


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice example.

    Attributes:
        context: prompt text; ends where the answer starts (no trailing whitespace, e.g. ``"...\\nAnswer:"``).
        choices: continuation strings, each starting with its delimiter (the whitespace between context and
            answer, usually one space), which ``acc_norm`` does not count, as lm-evaluation-harness.
        label: index of the correct choice.
    """

    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TaskSplits:
    """A task's deterministic, disjoint train / validation / test splits."""

    name: str
    train: list[MCExample]
    validation: list[MCExample]
    test: list[MCExample]


DatasetLoader = Callable[[str, str | None], Any]
"""``(path, config_name) -> datasets.DatasetDict``; ``datasets.load_dataset`` by default."""


@dataclass(frozen=True)
class _HubTask:
    path: str
    config: str | None
    test_split: str  # the split lm-evaluation-harness scores
    validation_split: str | None  # None: 5 % of train, as Offsite-Tuning does when a task has none
    convert: Callable[[dict[str, Any]], MCExample]


def _piqa(row: dict[str, Any]) -> MCExample:
    return MCExample(
        f"Question: {row['goal']}\nAnswer:", (f" {row['sol1']}", f" {row['sol2']}"), int(row["label"])
    )


def _lettered(context: str, row: dict[str, Any]) -> MCExample:
    texts, keys = row["choices"]["text"], row["choices"]["label"]
    return MCExample(context, tuple(f" {t}" for t in texts), keys.index(row["answerKey"]))


def _arc(row: dict[str, Any]) -> MCExample:
    return _lettered(f"Question: {row['question']}\nAnswer:", row)


def _openbookqa(row: dict[str, Any]) -> MCExample:
    return _lettered(row["question_stem"], row)


def _sciq(row: dict[str, Any]) -> MCExample:
    answers = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    context = f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:"
    return MCExample(context, tuple(f" {a}" for a in answers), 3)


# Hub repositories of plain parquet files, which ``datasets`` 4 loads (it no longer runs loading scripts): the
# original ``piqa`` / ``ybisk/piqa`` is a script, ``baber/piqa`` its parquet copy (the one lm-eval loads).
HUB_TASKS: dict[str, _HubTask] = {
    # PIQA's test split has no labels, so lm-eval scores validation and we carve validation out of train.
    "piqa": _HubTask("baber/piqa", None, "validation", None, _piqa),
    "arc_easy": _HubTask("allenai/ai2_arc", "ARC-Easy", "test", "validation", _arc),
    "arc_challenge": _HubTask("allenai/ai2_arc", "ARC-Challenge", "test", "validation", _arc),
    "sciq": _HubTask("allenai/sciq", None, "test", "validation", _sciq),
    "openbookqa": _HubTask("allenai/openbookqa", "main", "test", "validation", _openbookqa),
}
SYNTHETIC = "synthetic"


def task_names() -> list[str]:
    """Task names the registry offers: fixed names, then suggested BIG-bench tasks (any other works too)."""
    return [SYNTHETIC, *HUB_TASKS, *BIGBENCH_SUGGESTED]


def load_task(
    name: str, seed: int = 0, test_size: int | None = None, *, load_dataset_fn: DatasetLoader | None = None
) -> TaskSplits:
    """Load a multiple-choice task and split it deterministically.

    Args:
        name: ``synthetic`` (400 examples; ``synthetic:<n>`` for n of them, e.g. to split among many
            clients), a hub task (``piqa``, ``arc_easy``, ...), or ``bigbench:<task>[/<subtask>]``.
        seed: shuffling seed of the splits.
        test_size: number of test examples; default min(500, n // 4), or the whole hub test split.
        load_dataset_fn: loader for hub tasks, ``datasets.load_dataset`` by default (tests pass a local one).

    Returns:
        The task's train, validation and test splits; disjoint, and equal for equal arguments.

    Raises:
        ValueError: unknown task, a BIG-bench task without ``target_scores``, a missing BIG-bench archive, an
            unreachable hub dataset, or a ``test_size`` that leaves no training data.
    """
    if test_size is not None and test_size < 1:
        raise ValueError(f"test_size={test_size} must be at least 1")
    if name == SYNTHETIC or name.startswith(SYNTHETIC + ":"):
        return _split(name, synthetic_examples(_synthetic_size(name)), seed, test_size)
    if name.startswith(BIGBENCH_PREFIX):
        task = name[len(BIGBENCH_PREFIX) :]
        return _split(name, bigbench_examples(_read_bigbench_task(task), task), seed, test_size)
    if name in HUB_TASKS:
        return _load_hub_task(name, seed, test_size, load_dataset_fn)
    raise ValueError(
        f"task={name!r} is unknown; use one of {', '.join([SYNTHETIC, *HUB_TASKS])} or "
        f"bigbench:<task>[/<subtask>] (e.g. {BIGBENCH_SUGGESTED[0]})"
    )


def _split(name: str, examples: list[MCExample], seed: int, test_size: int | None) -> TaskSplits:
    n = len(examples)
    n_val = min(_MAX_VALIDATION, n // 10)
    n_test = test_size if test_size is not None else min(_MAX_TEST, n // 4)
    if n_val + n_test >= n:
        raise ValueError(
            f"test_size={n_test} leaves no training examples in {name} ({n} examples, {n_val} for "
            f"validation); use a test_size below {n - n_val}"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    pick = [examples[i] for i in order]
    return TaskSplits(name, pick[n_val + n_test :], pick[:n_val], pick[n_val : n_val + n_test])


# ----------------------------------------------------------------------------------------------- synthetic


def _synthetic_size(name: str) -> int:
    size = name.partition(":")[2] or "400"
    if not size.isdigit() or int(size) < 10:
        raise ValueError(f"task={name!r}: synthetic:<n> needs an integer n >= 10, got {size!r}")
    return int(size)


_WORDS = (
    "apple pear house river stone cloud green music paper window garden table bread summer horse light "
    "water chair money forest"
).split()


def synthetic_examples(n: int = 400, num_choices: int = 4) -> list[MCExample]:
    """A copy task: the context names a word, the correct choice repeats it, distractors are other words.

    The content is fixed (like a real dataset's); ``load_task``'s seed only changes the splits.

    Args:
        n: number of distinct examples.
        num_choices: choices per example, 2 to 20.

    Raises:
        ValueError: ``num_choices`` out of range.
    """
    if not 2 <= num_choices <= len(_WORDS):
        raise ValueError(f"num_choices={num_choices} is out of range; allowed 2..{len(_WORDS)}")
    rng = random.Random(1234)
    # An ordered set: distinct examples keep the splits disjoint by value.
    examples: dict[MCExample, None] = {}
    while len(examples) < n:
        words = rng.sample(_WORDS, num_choices)  # words[0] is the answer; its position is then random
        label = rng.randrange(num_choices)
        words[0], words[label] = words[label], words[0]
        examples[MCExample(f"Word: {words[label]}. Repeat:", tuple(f" {w}" for w in words), label)] = None
    return list(examples)


# ----------------------------------------------------------------------------------------------- BIG-bench


def bigbench_examples(task_json: dict[str, Any], name: str = "task") -> list[MCExample]:
    """Format the multiple-choice examples of one BIG-bench ``task.json`` as BIG-bench's JsonTask does.

    Context = ``task_prefix`` + ``example_input_prefix`` (default "\\nQ: ") + input
    [+ "\\n  choice: "-prefixed choices, where the task sets ``append_choices_to_input``; BIG-bench's default
    is true, ours false because small models score worse with the choices in the prompt]
    + ``example_output_prefix`` (default "\\nA: ").
    Trailing whitespace of the context moves to the front of every choice, as lm-evaluation-harness does, so
    that context and continuation tokenize separately without a dangling space token. Label = the first
    choice with the highest score. Exact duplicates are dropped (BIG-bench does too).

    Args:
        task_json: the parsed ``task.json``.
        name: task name for messages.

    Raises:
        ValueError: the task has no examples (a composite task) or none with ``target_scores`` (generative).
    """
    examples = task_json.get("examples", [])
    scored = [e for e in examples if isinstance(e.get("target_scores"), dict) and e["target_scores"]]
    if not examples:
        raise ValueError(
            f"bigbench:{name} has no examples of its own (a composite task); name a subtask, "
            f"bigbench:{name}/<subtask>"
        )
    if not scored:
        raise ValueError(
            f"bigbench:{name} is generative (no example has target_scores); use a multiple-choice task such "
            f"as {BIGBENCH_SUGGESTED[0]}"
        )
    if len(scored) < len(examples):
        log.warning(
            "bigbench:%s: skipped %d examples without target_scores", name, len(examples) - len(scored)
        )
    input_prefix = task_json.get("example_input_prefix", "\nQ: ")
    output_prefix = task_json.get("example_output_prefix", "\nA: ")
    choice_prefix = task_json.get("choice_prefix", "\n  choice: ")
    append_choices = task_json.get("append_choices_to_input", _APPEND_CHOICES_DEFAULT)
    task_prefix = str(task_json.get("task_prefix", ""))
    formatted: dict[MCExample, None] = {}  # an ordered set: dedupes and keeps the file's order
    for example in scored:
        scores: dict[str, float] = example["target_scores"]
        text = example["input"]
        if append_choices:
            shuffled = np.random.RandomState(_BIGBENCH_CHOICE_SEED).permutation(sorted(scores))
            text = text + choice_prefix + choice_prefix.join(shuffled)
        context = task_prefix + input_prefix + text + output_prefix
        stripped = context.rstrip()
        space = context[len(stripped) :]
        best = max(scores.values())
        label = next(i for i, score in enumerate(scores.values()) if score == best)
        formatted[MCExample(stripped, tuple(space + c for c in scores), label)] = None
    return list(formatted)


def bigbench_archive() -> Path:
    """Where the BIG-bench sdist is expected."""
    return cache_dir() / "bigbench" / BIGBENCH_ARCHIVE


def read_bigbench_task(task: str) -> dict[str, Any]:
    """The parsed ``task.json`` of ``<task>[/<subtask>]``, extracted once from the archive into the cache.

    Raises:
        ValueError: a malformed name, a missing archive, or a task the archive does not hold.
    """
    return _read_bigbench_task(task)


def _read_bigbench_task(task: str) -> dict[str, Any]:
    if not re.fullmatch(r"\w+(/\w+)?", task):
        raise ValueError(f"task='bigbench:{task}' is malformed; use bigbench:<task>[/<subtask>]")
    extracted = cache_dir() / "bigbench" / "tasks" / task / "task.json"
    # An extracted copy is only as current as the archive it came from: it records the archive's size and
    # modification time (ns); one without them or from another archive is extracted again. With the archive
    # gone (removed after extraction) the copy is all there is, and is used.
    stamp = extracted.with_name("source.json")
    archive = bigbench_archive()
    stat = archive.stat() if archive.exists() else None
    source = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns} if stat else None
    stale = source is not None and (not stamp.exists() or json.loads(stamp.read_text()) != source)
    if not extracted.exists() or stale:
        _extract_task_json(task, extracted)
        stamp.write_text(json.dumps(source))
    return json.loads(extracted.read_text(encoding="utf-8"))


def _extract_task_json(task: str, destination: Path) -> None:
    """Copy one task.json out of the 358 MB archive; a scan takes seconds, so it happens once per task."""
    archive = bigbench_archive()
    if not archive.exists():
        raise ValueError(
            f"the BIG-bench archive is missing ({archive}); run `make install`, or `.venv/bin/pip download "
            f"--no-deps --no-binary :all: bigbench==1.0.0 -d {archive.parent}`"
        )
    wanted = f"{_ARCHIVE_TASKS}{task}/task.json"
    seen: list[str] = []
    log.info("extracting bigbench:%s from %s (once)", task, archive)
    with tarfile.open(archive, "r|gz") as tar:  # streaming: stop reading as soon as the member is found
        for member in tar:
            if member.name == wanted and member.isfile():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                destination.parent.mkdir(parents=True, exist_ok=True)
                tmp = destination.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.rename(destination)  # atomic: a half-written copy is never taken as complete
                return
            if member.name.startswith(_ARCHIVE_TASKS) and member.name.endswith("/task.json"):
                seen.append(member.name[len(_ARCHIVE_TASKS) : -len("/task.json")])
    subtasks = [s for s in seen if s.startswith(f"{task}/")]
    if subtasks:
        hint = "it has subtasks: " + ", ".join(f"bigbench:{s}" for s in sorted(subtasks))
    else:
        close = difflib.get_close_matches(task, seen, n=3)
        hint = (
            "did you mean " + ", ".join(f"bigbench:{s}" for s in close)
            if close
            else f"{len(seen)} tasks exist"
        )
    raise ValueError(f"bigbench:{task} is not in {archive.name}; {hint}")


# ----------------------------------------------------------------------------------------------- hub tasks


def _load_hub_task(
    name: str, seed: int, test_size: int | None, load_dataset_fn: DatasetLoader | None
) -> TaskSplits:
    spec = HUB_TASKS[name]
    if load_dataset_fn is None:
        from datasets import load_dataset  # lazy: importing datasets costs seconds

        load_dataset_fn = load_dataset
    try:
        data = load_dataset_fn(spec.path, spec.config)
    except Exception as error:  # datasets raises many types offline; all mean the same thing to a user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"task={name!r} needs the hub dataset {spec.path} ({first_line}); go online, or use an offline "
            f"task such as {BIGBENCH_SUGGESTED[0]}"
        ) from error
    train = [spec.convert(row) for row in data["train"]]
    rng = random.Random(seed)
    rng.shuffle(train)
    if spec.validation_split is None:
        n_val = max(1, len(train) // 20)
        validation, train = train[:n_val], train[n_val:]
    else:
        validation = [spec.convert(row) for row in data[spec.validation_split]]
    test = [spec.convert(row) for row in data[spec.test_split]]
    if test_size is not None:
        test = rng.sample(test, min(test_size, len(test)))
    return TaskSplits(name, train, validation, test)
