"""Export: the plug-in model reloads with transformers, the LoRA adapter with peft, with the same logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from emulator.config import AdapterConfig
from emulator.lm.architectures import num_layers
from emulator.lm.models import TINY_CONFIGS, model_fingerprint
from emulator.scaleot.blocks import adapter_layers
from emulator.tuning.adapters import adapter_state, prepare_adapter_
from emulator.tuning.export import PEFT_ADAPTER_DIR, PLUG_IN_DIR, export_plug_in
from emulator.tuning.plug_in import plug_in_

_TEXT = "Question: how do you open a jar?\nAnswer: twist the lid"


def _fresh(name: str) -> torch.nn.Module:
    """The tiny model as ``load_model`` gives it (a copy: loading it again re-reads the tokenizer, ~1 s)."""
    return copy.deepcopy(tiny(name)[0])


def _trained_state(name: str, config: AdapterConfig) -> tuple[dict[str, torch.Tensor], list[int]]:
    """An adapter as if trained: the adapter blocks' trainable tensors moved off their initial values."""
    model = _fresh(name)
    layers = adapter_layers(num_layers(model), 2, 2)
    positions = {i: i for i in layers}
    prepare_adapter_(model, positions, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # LoRA's B starts at zero: without this the adapter would be a no-op
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return adapter_state(model, positions), layers


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=input_ids).logits


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_exported_plug_in_reloads_with_the_in_memory_logits(name, mode, tmp_path, tokenizer):
    config = AdapterConfig(mode=mode, lora_rank=4)
    state, layers = _trained_state(name, config)
    input_ids = tokenizer(_TEXT, return_tensors="pt").input_ids
    base_logits = _logits(_fresh(name), input_ids)
    in_memory = _logits(plug_in_(_fresh(name), state, layers, config), input_ids)  # the server's plug-in
    assert not torch.allclose(in_memory, base_logits, atol=1e-3)  # the adapter changes the model

    written = export_plug_in(_fresh(name), tokenizer, state, layers, config, tmp_path, name)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / PLUG_IN_DIR, dtype=torch.float32)
    torch.testing.assert_close(_logits(reloaded, input_ids), in_memory, rtol=1e-5, atol=1e-5)
    if name == "tiny-llama":  # the tokenizer is the same for all tiny models, and reading it takes a second
        assert AutoTokenizer.from_pretrained(written["plug_in"])(_TEXT).input_ids == input_ids[0].tolist()
    if mode == "full":
        assert set(written) == {"plug_in"} and not (tmp_path / PEFT_ADAPTER_DIR).exists()
        return
    adapter_dir = written["peft_adapter"]
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == layers and saved["r"] == 4
    assert saved["base_model_name_or_path"] == name
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as handle:
        parts = [key.split(".") for key in handle.keys()]
    assert {int(p[p.index(saved["layers_pattern"]) + 1]) for p in parts} == set(layers)
    peft_model = PeftModel.from_pretrained(_fresh(name), adapter_dir)
    torch.testing.assert_close(_logits(peft_model, input_ids), in_memory, rtol=1e-5, atol=1e-5)


def test_export_rejects_an_adapter_of_other_blocks(tmp_path, tokenizer):
    config = AdapterConfig(mode="lora", lora_rank=4)
    state, _ = _trained_state("tiny-llama", config)
    with pytest.raises(ValueError, match=r"adapter state does not match the model's adapter: missing keys"):
        export_plug_in(_fresh("tiny-llama"), tokenizer, state, [0, 1, 2, 7], config, tmp_path)


def test_scaleot_export_writes_both_artefacts_of_a_run_dir(tmp_path, capsys):
    from safetensors.torch import save_file

    from simulations.cli import main
    from simulations.run_config import RunConfig

    config = RunConfig.from_dict({"model": "tiny-gpt2", "adapter": {"mode": "lora", "lora_rank": 4}})
    state, layers = _trained_state("tiny-gpt2", config.adapter)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(config.to_toml())
    save_file(state, str(run_dir / "adapter.safetensors"))
    recorded = {"bundle": {"model_sha256": model_fingerprint(tiny("tiny-gpt2")[0])}}  # what the run hashed
    (run_dir / "metrics.json").write_text(json.dumps(recorded))

    assert main(["export", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"peft_adapter: {tmp_path / 'out' / PEFT_ADAPTER_DIR}",
        f"plug_in: {tmp_path / 'out' / PLUG_IN_DIR}",
    ]
    saved = json.loads((tmp_path / "out" / PEFT_ADAPTER_DIR / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == layers and saved["fan_in_fan_out"] is True  # GPT-2's Conv1D

    (run_dir / "adapter.safetensors").unlink()
    assert main(["export", str(run_dir)]) == 2
    assert "is not a finished run directory: adapter.safetensors is missing" in capsys.readouterr().err
