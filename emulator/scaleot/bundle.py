"""Emulator bundles: what the model owner ships to data owners, and how a data owner loads it.

A bundle is a directory with ``emulator.safetensors`` (the emulator's own tensors only: nothing of a replaced
or dropped block, and compressed projections only as their low-rank weights or factors), the tokenizer files,
and ``manifest.json`` (source model and its config, emulator config, layer map, scores, parameter counts,
build time, stage-1 loss curve, and the sha256 of the tensor file). ``load_emulator`` rebuilds a runnable
causal LM from the bundle alone: a skeleton from the emulator's transformers config (one decoder layer per
emulator position), the harmonizer and low-rank modules put in by the layer map, then a strict load of the
tensors.

Shared blocks (``crash``, ``share_replaced``) share their source's tensors in the emulator, so the tensor file
holds them once (the other names are listed as ``tied``), and the loader ties them again
(``layer_sharing.share_blocks_``): a loaded emulator takes the memory of the built one, and training a
shared tensor (the model-stealing probe does) changes it at every place it stands, as in the built one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer

from emulator.config import EmulatorConfig
from emulator.files import file_sha256, read_json, replacing, write_text
from emulator.lm.architectures import architecture_of, attention_projections, get_layers, hidden_size
from emulator.scaleot.assembly import Emulator
from emulator.scaleot.blocks import LayerEntry
from emulator.scaleot.harmonizer import Harmonizer
from emulator.scaleot.layer_sharing import SharedBlockHarmonizer, share_blocks_
from emulator.scaleot.rank_compression import LowRankLinear, projection_weight

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "emulator.safetensors"


def save_bundle(
    emulator: Emulator,
    directory: str | Path,
    source_model: str,
    tokenizer: Any,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``emulator`` as a bundle into ``directory`` (created if needed) and return the directory.

    Args:
        emulator: a built emulator.
        directory: where to write; existing bundle files are overwritten.
        source_model: name of the full model it was built from (``smollm2-135m``, a hub id, ...).
        tokenizer: the tokenizer data owners must use.
        provenance: what the emulator was derived from (e.g. the source model's and the corpus's content
            hashes), stored as the manifest's ``provenance`` so a cache can check a bundle before reusing it.

    Raises:
        FileWriteError: a file could not be written (the manifest is written last, so a bundle left without
            one is never loaded).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state, tied = _untied_state(emulator.model)
    with replacing(directory / TENSORS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source_model": source_model,
        "source_config": emulator.source_config,
        "model_config": json.loads(emulator.model.config.to_json_string(use_diff=False)),
        "emulator_config": emulator.config.to_dict(),
        "layer_map": [entry.to_dict() for entry in emulator.layer_map],
        "scores": {str(k): v for k, v in emulator.scores.items()},
        "num_parameters": emulator.num_parameters,
        "full_num_parameters": emulator.full_num_parameters,
        "build_seconds": emulator.build_seconds,
        "stage1_seconds": list(emulator.stage1_seconds),
        "loss_curve": emulator.loss_curve,
        "reward_curve": emulator.reward_curve,
        "dtype": str(next(iter(state.values())).dtype).removeprefix("torch."),
        "tensor_file": TENSORS,
        "sha256": file_sha256(directory / TENSORS),
        "tied": tied,
        "provenance": dict(provenance or {}),
    }
    write_text(directory / MANIFEST, json.dumps(manifest, indent=1))  # last: a bundle is complete with it
    return directory


def load_emulator(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Emulator, Any]:
    """Rebuild the emulator of a bundle, from the bundle alone.

    Args:
        directory: a directory written by ``save_bundle``.
        device: where to put the model.

    Returns:
        ``(emulator, tokenizer)``; the emulator is frozen and in eval mode.

    Raises:
        ValueError: no manifest, an unknown format version, a tensor file whose sha256 differs from the
            manifest's (the message names the file and both hashes), or tensors that do not fit the layer map.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    tensor_file = directory / manifest["tensor_file"]
    expected, actual = manifest["sha256"], file_sha256(tensor_file)
    if actual != expected:
        raise ValueError(
            f"{tensor_file}: sha256 {actual} does not match the manifest's {expected}; "
            "the bundle was modified or corrupted, refusing to load it"
        )
    config = EmulatorConfig.from_dict(manifest["emulator_config"])
    layer_map = [LayerEntry.from_dict(d) for d in manifest["layer_map"]]
    model = _skeleton(manifest["model_config"], layer_map, config, getattr(torch, manifest["dtype"]))
    _load_strict_(model, load_file(str(tensor_file)), manifest["tied"], tensor_file)
    model.requires_grad_(False)
    emulator = Emulator(
        model=model.to(device).eval(),
        config=config,
        layer_map=layer_map,
        scores={int(k): float(v) for k, v in manifest["scores"].items()},
        loss_curve=list(manifest["loss_curve"]),
        reward_curve=list(manifest["reward_curve"]),
        build_seconds=float(manifest["build_seconds"]),
        stage1_seconds=tuple(manifest.get("stage1_seconds", (0.0, 0.0))),  # bundles before: not recorded
        num_parameters=int(manifest["num_parameters"]),
        full_num_parameters=int(manifest["full_num_parameters"]),
        source_config=manifest["source_config"],
    )
    return emulator, AutoTokenizer.from_pretrained(directory)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The bundle's manifest as a dict.

    Raises:
        ValueError: the directory has no manifest, one that is not JSON (truncated), or one of an unknown
            format version.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist; {directory} is not an emulator bundle (see `scaleot build-emulator`)"
        )
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} holds no JSON object; it is not an emulator bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version={manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return manifest


def _untied_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    # safetensors refuses shared storage: keep the first name of each tied tensor, remember the others.
    state: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    tied: dict[str, str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        state[name] = tensor.detach().to("cpu").contiguous()
    return state, tied


def _skeleton(
    model_config: dict[str, Any], layer_map: list[LayerEntry], config: EmulatorConfig, dtype: torch.dtype
) -> nn.Module:
    model_config = {k: v for k, v in model_config.items() if not (k == "loss_type" and v is None)}
    transformers_config = CONFIG_MAPPING[model_config.pop("model_type")].from_dict(model_config)
    model = AutoModelForCausalLM.from_config(transformers_config, dtype=dtype)
    transposed = architecture_of(model).transposed
    layers = get_layers(model)  # already one block per emulator position: the config describes the emulator
    for entry in layer_map:
        if entry.kind in ("harmonizer", "shared+harmonizer"):
            harmonizer = Harmonizer(
                hidden_size(model), config.stage1.harmonizer_rank, config.stage1.harmonizer_activation
            ).to(dtype)
            shared = entry.kind == "shared+harmonizer"  # its block is made by share_blocks_ below
            layers[entry.position] = (
                SharedBlockHarmonizer(layers[entry.position], harmonizer) if shared else harmonizer
            )
        for path in entry.factorized:
            block = layers[entry.position]
            module = attention_projections(model, block)[path]
            d_out, d_in = projection_weight(module, transposed).shape
            low = LowRankLinear(d_in, d_out, entry.ranks[path], bias=module.bias is not None).to(dtype)
            parent, _, name = path.rpartition(".")
            setattr(block.get_submodule(parent), name, low)
    share_blocks_(model, layer_map)  # after the sources took their final (low-rank) form
    return model


def _load_strict_(
    model: nn.Module, state: dict[str, torch.Tensor], tied: dict[str, str], source: Path
) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - set(tied))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit the layer map: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, target in tied.items():
            if name in params and params[name] is not params.get(target):
                params[name].copy_(state[target])  # the skeleton did not tie them; copy the shared values
