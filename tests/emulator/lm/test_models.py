"""Model loading: GGUF files by path (dequantised once into the cache), and one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from emulator.lm.models import _GGUF_FILE, _gguf_dir, check_model_name, load_model


def test_a_missing_gguf_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"model='.*nope.gguf' is not a file; give the path of an existing"):
        load_model(str(tmp_path / "nope.gguf"))


ALLOWED = "; give one of smollm2-135m, tiny-llama"


def test_a_damaged_gguf_file_is_a_one_line_error_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUFjunk")  # the magic, then a header cut short: struct.error in transformers
    with pytest.raises(ValueError) as error:
        load_model(str(fake))
    message = str(error.value)
    assert message.startswith(f"model={str(fake)!r} cannot be loaded: struct.error: unpack_from requires")
    assert ALLOWED in message and "\n" not in message


@pytest.mark.parametrize(
    "config, reason",
    [
        (None, "config.json is missing (not a save_pretrained directory)"),
        ("{bad", "config.json is not valid JSON"),
    ],
)
def test_a_directory_without_a_readable_config_is_refused_without_loading(tmp_path, config, reason):
    # transformers used to blame sentencepiece/tiktoken (no config.json) or not name the model (bad JSON).
    model = tmp_path / "model"
    model.mkdir()
    if config is not None:
        (model / "config.json").write_text(config)
    with pytest.raises(ValueError) as error:
        check_model_name(str(model))
    assert str(error.value).startswith(f"model={str(model)!r} cannot be loaded: {model / reason}")
    assert ALLOWED in str(error.value)


def test_a_directory_without_weights_says_so_not_that_a_tokenizer_is_missing(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError) as error:
        load_model(str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"model={str(tmp_path)!r} cannot be loaded: OSError: ")
    assert "model.safetensors" in message and "sentencepiece" not in message and ALLOWED in message


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
