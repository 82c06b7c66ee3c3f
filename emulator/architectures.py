"""Where each supported architecture keeps its decoder blocks and attention projections.

This is the only module that knows model internals by family (keyed by ``config.model_type``, as peft's
constants tables are); everything else asks it. Adding a family means adding one row to ``ARCHITECTURES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Structural facts about one model family.

    Attributes:
        layers: dotted path from the causal-LM module to its ``nn.ModuleList`` of decoder blocks.
        attention: dotted paths, inside one block, of the attention projections SRC may compress.
        transposed: True where projections are GPT-2 ``Conv1D`` modules storing weights as (d_in, d_out).
        per_layer_config: config lists indexed by block position, which must follow the block list when it
            changes.
        positions: the config attribute holding the number of positions the model can embed (GPT-2's
            learned position table; the trained context of rotary models): the longest sequence it takes.
    """

    layers: str
    attention: tuple[str, ...]
    transposed: bool = False
    per_layer_config: tuple[str, ...] = ()
    positions: str = "max_position_embeddings"


_LLAMA_LIKE = Architecture(
    layers="model.layers",
    attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    per_layer_config=("layer_types",),
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gpt2": Architecture(
        layers="transformer.h",
        attention=("attn.c_attn", "attn.c_proj"),
        transposed=True,
        positions="n_positions",
    ),
    "opt": Architecture(
        layers="model.decoder.layers",
        attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
    ),
}


def architecture_of(model: nn.Module) -> Architecture:
    """The ``Architecture`` row for ``model``.

    Raises:
        ValueError: the model's ``config.model_type`` is not in ``ARCHITECTURES``.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"model_type={model_type!r} is not supported; "
            f"supported families: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def get_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order."""
    return model.get_submodule(architecture_of(model).layers)


def num_layers(model: nn.Module) -> int:
    return len(get_layers(model))


def set_layers_(model: nn.Module, layers: list[nn.Module], source_index: list[int]) -> None:
    """Swap the model's block list in place, keeping the config consistent with it.

    Args:
        layers: the new blocks, in order.
        source_index: for each new position, the index of the original block it stands for; per-layer config
            entries (e.g. Qwen2's ``layer_types``) are re-indexed by it so masks stay right.
    """
    arch = architecture_of(model)
    parent_path, _, name = arch.layers.rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, name, nn.ModuleList(layers))
    config = model.config
    for key in arch.per_layer_config:
        values = getattr(config, key, None)
        if values is not None:
            setattr(config, key, [values[i] for i in source_index])
    # Llama-style models iterate over layers[: config.num_hidden_layers]; GPT-2 keeps n_layer.
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(layers)


def attention_projections(model: nn.Module, block: nn.Module) -> dict[str, nn.Module]:
    """The attention projections of one block, by their dotted name inside it."""
    return {path: block.get_submodule(path) for path in architecture_of(model).attention}


def hidden_size(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or config.n_embd


def position_limit(model: nn.Module) -> int:
    """The longest sequence, in tokens, ``model`` can take (its ``Architecture.positions`` config value)."""
    return int(getattr(model.config, architecture_of(model).positions))
