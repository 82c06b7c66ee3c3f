"""Shared test fixtures and helpers: keep this minimal.

Test modules import the plain helpers (``from conftest import TINY, tiny``): pytest puts ``tests/`` on
``sys.path`` for its rootdir conftest, and a cached function can be called from module-level helpers where a
fixture cannot.
"""

from __future__ import annotations

import functools

import pytest
from transformers import PreTrainedTokenizerBase

from emulator.models import load_model, load_tokenizer

TINY = ["tiny-llama", "tiny-gpt2", "tiny-opt", "tiny-qwen2"]  # one tiny random model per family


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, which the tiny random models share; loading it once saves seconds per test."""
    return load_tokenizer()


@functools.cache
def tiny(name: str):
    """``(model, tokenizer)`` of a tiny random model, loaded once per session; tests deep-copy to modify."""
    return load_model(name)
