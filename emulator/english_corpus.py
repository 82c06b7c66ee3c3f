"""An offline corpus of English prose for stage 1, built from the cached BIG-bench archive.

Why: stage 1 (harmonizers and importance) needs plenty of ordinary English (Offsite-Tuning used the Pile).
Offline, the only large English source this project has is the BIG-bench sdist it already caches for its tasks
(design §4). Reconstruction (ours), versioned by ``CORPUS_VERSION``:

- every ``task.json`` of the archive whose keywords (its own and its parent task's) include none of
  ``_NOT_PROSE`` (non-English, code, arithmetic, ...) contributes its examples, one document each:
  the ``input`` followed by the correct answer (the best-scored choice, or the first ``target``);
- a document is kept only if at least 98 % of its characters are ASCII and at least 60 % of its non-space
  characters are letters; a task contributes at most ``_TASK_CHARS`` characters (so no task dominates);
- a top-level task (with all its subtasks) goes to ``validation`` when the CRC32 of its name is divisible
  by 10, else to ``train``; tasks in sorted order, examples in file order: the corpus is deterministic.

The per-task documents are cached once as JSON under ``cache_dir()/corpus`` (the archive scan takes about a
minute). The text is never committed: BIG-bench asks that its data stay out of training corpora of released
models, and this corpus only trains harmonizers that are never released beyond the emulator.

**The evaluated task never enters the corpus.** ``bigbench_corpus(split, exclude=task)`` drops the task's
top-level directory (all its subtasks), then checks by content that none of the task's sentences remains
(any sentence of 8+ words, normalised: lower case, letters and digits only) and refuses with a ValueError
otherwise, so a task copied into another task is caught too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emulator.models import cache_dir
from emulator.tasks import _ARCHIVE_TASKS, bigbench_archive, read_bigbench_task

log = logging.getLogger(__name__)

CORPUS_VERSION = 1  # bump when the selection rules change; the cache file name carries it
_NOT_PROSE = frozenset(
    {
        "non-English",
        "low-resource language",
        "multilingual",
        "translation",
        "computer code",
        "non-language",
        "mathematics",
        "arithmetic",
    }
)
_TASK_CHARS = 20_000
_MIN_SENTENCE_WORDS = 8  # shorter sentences ("What happens next?") are shared by many tasks by chance


def corpus_file() -> Path:
    """Where the per-task documents are cached."""
    return cache_dir() / "corpus" / f"bigbench-english-v{CORPUS_VERSION}.json"


def bigbench_corpus(split: str, exclude: str = "") -> str:
    """English text of the BIG-bench corpus without the ``exclude`` task.

    Args:
        split: ``train`` or ``validation`` (disjoint by top-level task).
        exclude: a BIG-bench task name (``goal_step_wikihow/step_inference``, with or without ``bigbench:``)
            whose top-level task and subtasks are left out; empty: nothing left out.

    Returns:
        The documents of the split joined by blank lines.

    Raises:
        ValueError: unknown split, a missing archive, or the excluded task's text found in the corpus.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r} is unknown; use 'train' or 'validation'")
    exclude = exclude.removeprefix("bigbench:")
    top = exclude.split("/")[0]
    tasks = _cached_documents()
    documents = [
        doc
        for name in sorted(tasks)
        if (name.split("/")[0] != top or not top) and _split_of(name) == split
        for doc in tasks[name]
    ]
    if exclude:
        _check_disjoint(documents, exclude)
    return "\n\n".join(documents)


def sentence_hashes(texts: Iterable[str]) -> set[str]:
    """Hashes of the normalised sentences of 8+ words in ``texts`` (lower case, letters and digits only)."""
    hashes = set()
    for text in texts:
        for sentence in re.split(r"[.!?\n]+", text):
            words = re.findall(r"[a-z0-9]+", sentence.lower())
            if len(words) >= _MIN_SENTENCE_WORDS:
                hashes.add(hashlib.sha1(" ".join(words).encode()).hexdigest())
    return hashes


def task_texts(task_json: dict[str, Any]) -> list[str]:
    """One document per example of a BIG-bench task: its input and its correct answer."""
    texts = []
    for example in task_json.get("examples", []):
        answer = _answer(example)
        text = str(example.get("input", "")).strip()
        texts.append(f"{text} {answer}".strip() if answer else text)
    return [t for t in texts if t]


def _check_disjoint(documents: list[str], task: str) -> None:
    found = sentence_hashes(task_texts(read_bigbench_task(task))) & sentence_hashes(documents)
    if found:
        raise ValueError(
            f"emulator.corpus='bigbench' holds {len(found)} sentences of the evaluated task bigbench:{task}; "
            "use corpus='pydoc' or remove the overlapping task from the corpus"
        )


def _split_of(name: str) -> str:
    top = name.split("/")[0]
    return "validation" if zlib.crc32(top.encode()) % 10 == 0 else "train"


def _answer(example: dict[str, Any]) -> str:
    scores = example.get("target_scores")
    if isinstance(scores, dict) and scores:
        best = max(scores.values())
        return str(next(k for k, v in scores.items() if v == best))
    target = example.get("target")
    if isinstance(target, list):
        return str(target[0]) if target else ""
    return str(target or "")


def _is_prose(text: str) -> bool:
    if not text:
        return False
    ascii_share = sum(c.isascii() for c in text) / len(text)
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible) / max(len(visible), 1)
    return ascii_share >= 0.98 and letters >= 0.6


def _cached_documents() -> dict[str, list[str]]:
    path = corpus_file()
    if not path.is_file():
        documents = _scan_archive()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(documents, ensure_ascii=False), encoding="utf-8")
        tmp.rename(path)  # atomic: a half-written cache is never taken as complete
    return json.loads(path.read_text(encoding="utf-8"))


def _scan_archive() -> dict[str, list[str]]:
    archive = bigbench_archive()
    if not archive.exists():
        raise ValueError(f"corpus 'bigbench' needs the BIG-bench archive ({archive}); run `make install`")
    log.info("building the BIG-bench English corpus from %s (once, about a minute)", archive)
    raw: dict[str, dict[str, Any]] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            path = member.name
            if member.isfile() and path.startswith(_ARCHIVE_TASKS) and path.endswith("/task.json"):
                name = member.name[len(_ARCHIVE_TASKS) : -len("/task.json")]
                raw[name] = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    documents: dict[str, list[str]] = {}
    for name in sorted(raw):
        parent = raw.get(name.split("/")[0], {})
        keywords = set(raw[name].get("keywords", [])) | set(parent.get("keywords", []))
        if keywords & _NOT_PROSE:
            continue
        kept, size = [], 0
        for text in task_texts(raw[name]):
            if _is_prose(text) and size + len(text) <= _TASK_CHARS:
                kept.append(text)
                size += len(text)
        if kept:
            documents[name] = kept
    return documents
