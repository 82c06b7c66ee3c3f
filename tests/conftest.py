"""Shared test fixtures and helpers: keep this minimal.

Test modules import the plain helpers (``from conftest import TINY, tiny``): pytest puts ``tests/`` on
``sys.path`` for its rootdir conftest, and a cached function can be called from module-level helpers where a
fixture cannot.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile

import pytest
from transformers import PreTrainedTokenizerBase

from emulator.models import load_model, load_tokenizer
from emulator.tasks import _ARCHIVE_TASKS, bigbench_archive

TINY = ["tiny-llama", "tiny-gpt2", "tiny-opt", "tiny-qwen2"]  # one tiny random model per family


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, which the tiny random models share; loading it once saves seconds per test."""
    return load_tokenizer()


@functools.cache
def tiny(name: str):
    """``(model, tokenizer)`` of a tiny random model, loaded once per session; tests deep-copy to modify."""
    return load_model(name)


def write_bigbench_archive(tasks: dict[str, dict]) -> None:
    """A fake BIG-bench archive at ``bigbench_archive()`` (under ``$SCALEOT_CACHE``) with the real layout:
    one ``task.json`` per task name (``family/sub`` for a subtask)."""
    path = bigbench_archive()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in tasks.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"{_ARCHIVE_TASKS}{name}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
