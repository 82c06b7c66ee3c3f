"""BIG-bench multiple-choice tasks, from task files the user provides (no longer a default or a download).

Since 2026-12 the registry no longer serves the ``bigbench==1.0.0`` sdist that carried the task files, so
nothing in set-up fetches them. Users who have them point the project at either
- a clone of https://github.com/google/BIG-bench: ``SCALEOT_BIGBENCH=<clone>/bigbench/benchmark_tasks``, or
- the archive ``bigbench-1.0.0.tar.gz``: ``SCALEOT_BIGBENCH=<file>``, or the file at ``<cache>/bigbench/``.
A task read from the archive is extracted once into the cache.

Prompts follow BIG-bench's own formatting (``task_prefix``, ``example_input_prefix``,
``example_output_prefix``), except that choices are appended to the input only where the task.json asks.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from emulator.assets import cache_root
from emulator.data.examples import MCExample
from emulator.files import write_bytes, write_text

log = logging.getLogger(__name__)

BIGBENCH_PREFIX = "bigbench:"
BIGBENCH_ARCHIVE = "bigbench-1.0.0.tar.gz"
BIGBENCH_ENV = "SCALEOT_BIGBENCH"
ARCHIVE_TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
# BIG-bench's JsonTask shuffles the choices it appends to the input with this fixed seed.
_BIGBENCH_CHOICE_SEED = 42
# BIG-bench appends the choices to the input unless a task says otherwise; we only where a task says so: on
# goal_step_wikihow/step_inference, SmolLM2-135M scores 0.28 with the choices appended and 0.41 without
# (200 test examples), and the prompt is three times longer.
_APPEND_CHOICES_DEFAULT = False
_WHERE = (
    f"BIG-bench's task files are no longer on PyPI: clone https://github.com/google/BIG-bench and set "
    f"{BIGBENCH_ENV}=<clone>/bigbench/benchmark_tasks, or set {BIGBENCH_ENV} to a {BIGBENCH_ARCHIVE} you have"
)


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
            f"bigbench:{name} is generative (no example has target_scores); use a multiple-choice task"
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


def bigbench_source() -> Path:
    """Where BIG-bench's task files are read from: ``$SCALEOT_BIGBENCH`` (a ``benchmark_tasks`` folder or the
    archive), else the archive at ``<cache>/bigbench/bigbench-1.0.0.tar.gz``."""
    override = os.environ.get(BIGBENCH_ENV)
    return Path(override) if override else cache_root() / "bigbench" / BIGBENCH_ARCHIVE


def read_bigbench_task(task: str) -> dict[str, Any]:
    """The parsed ``task.json`` of ``<task>[/<subtask>]``.

    Raises:
        ValueError: a malformed name, no task files where ``bigbench_source`` points (saying where to get
            them), or a task they do not hold (with the closest names).
    """
    if not re.fullmatch(r"\w+(/\w+)?", task):
        raise ValueError(f"task='bigbench:{task}' is malformed; use bigbench:<task>[/<subtask>]")
    source = bigbench_source()
    if source.is_dir():
        path = source / task / "task.json"
        if not path.is_file():
            seen = [str(p.parent.relative_to(source)) for p in source.glob("**/task.json")]
            raise ValueError(f"bigbench:{task} is not in {source}; {_hint(task, seen)}")
        return json.loads(path.read_text(encoding="utf-8"))
    return _read_from_archive(task, source)


def _read_from_archive(task: str, archive: Path) -> dict[str, Any]:
    extracted = cache_root() / "bigbench" / "tasks" / task / "task.json"
    # An extracted copy is only as current as the archive it came from: it records the archive's size and
    # modification time (ns); one without them or from another archive is extracted again. With the archive
    # gone (removed after extraction) the copy is all there is, and is used.
    stamp = extracted.with_name("source.json")
    stat = archive.stat() if archive.is_file() else None
    source = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns} if stat else None
    stale = source is not None and (not stamp.exists() or json.loads(stamp.read_text()) != source)
    if not extracted.exists() or stale:
        if stat is None:
            raise ValueError(
                f"bigbench:{task} needs BIG-bench's task files, and {archive} is missing; {_WHERE}"
            )
        _extract_task_json(task, archive, extracted)
        write_text(stamp, json.dumps(source))
    return json.loads(extracted.read_text(encoding="utf-8"))


def _extract_task_json(task: str, archive: Path, destination: Path) -> None:
    """Copy one task.json out of the 358 MB archive; a scan takes seconds, so it happens once per task."""
    wanted = f"{ARCHIVE_TASKS}{task}/task.json"
    seen: list[str] = []
    log.info("extracting bigbench:%s from %s (once)", task, archive)
    with tarfile.open(archive, "r|gz") as tar:  # streaming: stop reading as soon as the member is found
        for member in tar:
            if member.name == wanted and member.isfile():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                destination.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(destination, data)  # atomic: a half-written copy is never taken as complete
                return
            if member.name.startswith(ARCHIVE_TASKS) and member.name.endswith("/task.json"):
                seen.append(member.name[len(ARCHIVE_TASKS) : -len("/task.json")])
    raise ValueError(f"bigbench:{task} is not in {archive.name}; {_hint(task, seen)}")


def _hint(task: str, seen: list[str]) -> str:
    subtasks = [s for s in seen if s.startswith(f"{task}/")]
    if subtasks:
        return "it has subtasks: " + ", ".join(f"bigbench:{s}" for s in sorted(subtasks))
    close = difflib.get_close_matches(task, seen, n=3)
    return (
        "did you mean " + ", ".join(f"bigbench:{s}" for s in close) if close else f"{len(seen)} tasks exist"
    )
