"""Model loading: GGUF files by path (dequantised once into the cache), and one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from emulator.lm.models import _GGUF_FILE, _gguf_dir, load_model


def test_a_missing_gguf_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"model='.*nope.gguf' is not a file; give the path of an existing"):
        load_model(str(tmp_path / "nope.gguf"))


@pytest.mark.system  # dequantises SmolLM2's GGUF into a fresh cache: a minute on 2 cores
def test_a_gguf_file_loads_like_the_embedded_model_and_is_dequantised_once(tmp_path, monkeypatch, caplog):
    reference, _ = load_model("smollm2-135m")  # the same GGUF, through the shared cache
    gguf = str(Path(_gguf_dir()) / _GGUF_FILE)
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="emulator.lm.models"):
        model, tokenizer = load_model(gguf)
        assert sum("dequantising" in r.message for r in caplog.records) == 1
        load_model(gguf)
        assert sum("dequantising" in r.message for r in caplog.records) == 1  # the second load used the copy
    assert [p.name for p in (tmp_path / "models").iterdir()][0].startswith("SmolLM2-135M-Instruct.Q4_1-")
    expected = reference.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in model.state_dict().items())
    assert tokenizer("Hello world").input_ids == load_model("tiny-llama")[1]("Hello world").input_ids
