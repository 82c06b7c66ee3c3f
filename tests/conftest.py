"""Shared test fixtures: keep this minimal."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from emulator.models import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, which the tiny random models share; loading it once saves seconds per test."""
    return load_tokenizer()
