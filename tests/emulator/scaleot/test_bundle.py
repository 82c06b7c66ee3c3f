"""Emulator bundles: exact round trip, nothing of replaced / dropped blocks inside, tampering refused."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from conftest import tiny
from safetensors.torch import load_file

from emulator.config import EmulatorConfig
from emulator.lm.architectures import get_layers
from emulator.lm.models import TINY_CONFIGS
from emulator.scaleot.assembly import build_emulator
from emulator.scaleot.bundle import TENSORS, load_emulator, read_manifest, save_bundle

TINY = sorted(TINY_CONFIGS)  # every family: its config and layer list rebuilt from the bundle alone
IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))


@functools.cache
def built(name: str, method: str, rank_keep: float):
    model, tokenizer = tiny(name)
    config = EmulatorConfig.of(method=method, alpha=0.5, rank_keep=rank_keep, stage1_steps=2, batch_size=4)
    blocks = torch.randint(0, 2000, (24, 16), generator=torch.Generator().manual_seed(0))
    return build_emulator(model, config, blocks, progress=False)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(("method", "rank_keep"), [("scaleot", 0.2), ("scaleot", 0.8), ("uniform", 0.5)])
def test_round_trip_gives_identical_logits(tmp_path, name, method, rank_keep):
    emulator = built(name, method, rank_keep)
    save_bundle(emulator, tmp_path, name, tiny(name)[1])
    loaded, tokenizer = load_emulator(tmp_path)
    assert torch.equal(logits(loaded.model), logits(emulator.model))
    assert loaded.layer_map == emulator.layer_map and loaded.config == emulator.config
    assert loaded.scores == emulator.scores and loaded.adapter_positions() == emulator.adapter_positions()
    assert (loaded.num_parameters, loaded.full_num_parameters) == (
        emulator.num_parameters,
        emulator.full_num_parameters,
    )
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert tokenizer("def f(): pass")["input_ids"] == tiny(name)[1]("def f(): pass")["input_ids"]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(("method", "rank_keep"), [("scaleot", 0.2), ("scaleot", 0.8), ("uniform", 0.5)])
def test_bundle_holds_no_weight_of_replaced_dropped_or_compressed_originals(
    tmp_path, name, method, rank_keep
):
    emulator = built(name, method, rank_keep)
    save_bundle(emulator, tmp_path, name, tiny(name)[1])
    full_layers = get_layers(tiny(name)[0])
    secret = []
    for entry in emulator.layer_map:
        block = full_layers[entry.original]
        if entry.kind in ("harmonizer", "dropped"):
            secret += [p.detach() for p in block.parameters()]
        if entry.kind == "compressed":  # the projections SRC reduced (with the default form: q and k)
            weights = [block.get_submodule(path).weight.detach() for path in entry.ranks]
            ranks = entry.ranks.values()
            secret += [w for w, rank in zip(weights, ranks, strict=True) if rank < min(w.shape)]
    # Tiny random models initialise norms to ones and biases to zeros in every block: constants are no secret.
    secret = [w for w in secret if w.numel() > 1 and not torch.all(w == w.flatten()[0])]
    assert secret
    for key, tensor in load_file(str(tmp_path / TENSORS)).items():
        for weight in secret:
            assert not (tensor.shape == weight.shape and torch.equal(tensor, weight)), key


def test_manifest_describes_the_emulator(tmp_path):
    emulator = built("tiny-llama", "scaleot", 0.8)
    save_bundle(emulator, tmp_path, "tiny-llama", tiny("tiny-llama")[1])
    manifest = read_manifest(tmp_path)
    assert manifest["source_model"] == "tiny-llama"
    assert manifest["source_config"]["num_hidden_layers"] == 8
    assert manifest["emulator_config"] == emulator.config.to_dict()
    assert [e["kind"] for e in manifest["layer_map"]].count("harmonizer") == 2
    assert manifest["num_parameters"] < manifest["full_num_parameters"]
    assert len(manifest["loss_curve"]) == 2 and len(manifest["sha256"]) == 64
    assert (tmp_path / "tokenizer.json").is_file()
    wall, cpu = manifest["stage1_seconds"]
    assert 0 < wall < emulator.build_seconds and cpu > 0
    assert load_emulator(tmp_path)[0].stage1_seconds == emulator.stage1_seconds


def test_tampered_tensor_file_is_refused(tmp_path):
    emulator = built("tiny-llama", "scaleot", 0.8)
    save_bundle(emulator, tmp_path, "tiny-llama", tiny("tiny-llama")[1])
    expected = json.loads((tmp_path / "manifest.json").read_text())["sha256"]
    data = bytearray((tmp_path / TENSORS).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / TENSORS).write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=rf"{TENSORS}: sha256 [0-9a-f]{{64}} does not match the manifest's {expected}"
    ):
        load_emulator(tmp_path)


def test_missing_manifest_is_refused(tmp_path):
    with pytest.raises(ValueError, match="manifest.json does not exist; .* is not an emulator bundle"):
        load_emulator(tmp_path)


def test_build_emulator_command_writes_a_loadable_bundle(tmp_path, capsys):
    from simulations.cli import main

    argv = ["build-emulator", "--model", "tiny-llama", "--alpha", "0.5", "--rank-keep", "0.5", "--steps", "2"]
    argv += ["--set", "seq_len=32", "--set", "harmonizer_loss=lm", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "harmonizer: " in out and "parameters: " in out and "build time: " in out
    emulator, _ = load_emulator(tmp_path)
    assert emulator.config.stage1.harmonizer_loss == "lm" and emulator.config.stage1.stage1_steps == 2


def test_build_emulator_command_rejects_bad_settings(tmp_path, capsys):
    from simulations.cli import main

    assert main(["build-emulator", "--model", "tiny-llama", "--set", "rank=2", "--out", str(tmp_path)]) == 2
    assert (
        "error: unknown config key 'emulator.rank' in [emulator]; valid keys: method,"
        in capsys.readouterr().err
    )
