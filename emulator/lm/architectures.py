"""Where each supported architecture keeps its decoder blocks and attention projections.

This is the only module that knows model internals by family (keyed by ``config.model_type``, as peft's
constants tables are); everything else asks it. Adding a family means adding one row to ``ARCHITECTURES``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Architecture:
    """Structural facts about one model family.

    Attributes:
        layers: dotted path from the causal-LM module to its ``nn.ModuleList`` of decoder blocks.
        attention: dotted paths, inside one block, of the attention projections SRC may compress.
        transposed: True where projections are GPT-2 ``Conv1D`` modules storing weights as (d_in, d_out).
        per_layer_config: config lists indexed by block position, which must follow the block list when it
            changes.
        backbone: dotted path of the module that maps token ids to the final hidden states, the final norm
            included (``final_norm`` lies inside it); the LM head (``get_output_embeddings``) applies to its
            output, followed by the soft-cap below where the family has one.
        final_norm: dotted path of the final norm inside the causal LM (documents where it lives).
        sdpa: the family's attention runs on PyTorch's ``scaled_dot_product_attention`` in transformers.
        logit_softcap: name of the config attribute holding the final-logit soft-cap (Gemma 2's
            ``final_logit_softcapping``); "" for families whose logits are the head's output as it is.
        positions: the config attribute holding the number of positions the model can embed (GPT-2's
            learned position table; the trained context of rotary models): the longest sequence it takes.
    """

    layers: str
    attention: tuple[str, ...]
    transposed: bool = False
    per_layer_config: tuple[str, ...] = ()
    backbone: str = "model"
    final_norm: str = "model.norm"
    sdpa: bool = True
    logit_softcap: str = ""
    positions: str = "max_position_embeddings"


_LLAMA_LIKE = Architecture(
    layers="model.layers",
    attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    per_layer_config=("layer_types",),
)
_GEMMA_SOFTCAP = replace(_LLAMA_LIKE, logit_softcap="final_logit_softcapping")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    # Gemma 2 (and Gemma 3 where its config sets it) soft-caps the final logits: cap · tanh(logits / cap).
    "gemma2": replace(_GEMMA_SOFTCAP, sdpa=False),  # transformers runs Gemma 2 on eager attention only
    "gemma3_text": _GEMMA_SOFTCAP,  # Gemma 3's text-only checkpoints (1B, and the text part of larger ones)
    "qwen3": _LLAMA_LIKE,
    "smollm3": Architecture(
        layers=_LLAMA_LIKE.layers,
        attention=_LLAMA_LIKE.attention,
        per_layer_config=("layer_types", "no_rope_layers"),
    ),
    # Phi-3 fuses q, k and v into one projection (and gate and up in the MLP).
    "phi3": Architecture(
        layers="model.layers",
        attention=("self_attn.qkv_proj", "self_attn.o_proj"),
        per_layer_config=("layer_types",),
    ),
    "gpt2": Architecture(
        layers="transformer.h",
        attention=("attn.c_attn", "attn.c_proj"),
        transposed=True,
        backbone="transformer",
        final_norm="transformer.ln_f",
        positions="n_positions",
    ),
    "opt": Architecture(
        layers="model.decoder.layers",
        attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        final_norm="model.decoder.final_layer_norm",
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


def backbone(model: nn.Module) -> nn.Module:
    """The module returning the final (normed) hidden states, (B, T, H), before the LM head: the model without
    its head, for passes that need only hidden states (the head is the costliest matrix of a small model)."""
    return model.get_submodule(architecture_of(model).backbone)


def head_logits(model: nn.Module, hidden: Tensor, keep: Tensor) -> Tensor:
    """Logits of the LM head at the kept positions only: the head is the largest matrix of a small model.

    Args:
        model: a causal LM of a supported family.
        hidden: (B, T, H) final hidden states from ``backbone(model)``.
        keep: (B, T) bool, the positions whose logits are needed.

    Returns:
        (N, V) logits in ``hidden``'s dtype, N = ``keep.sum()``, in row-major order of ``keep``.
    """
    logits = model.get_output_embeddings()(hidden[keep])
    key = architecture_of(model).logit_softcap
    cap = getattr(model.config, key, None) if key else None
    return cap * torch.tanh(logits / cap) if cap else logits


def num_layers(model: nn.Module) -> int:
    """The number of transformer blocks in ``model``'s block list (an emulator's: after its surgery)."""
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
    set_layer_config_(model, layer_config(model), source_index)
    config = model.config
    # Llama-style models iterate over layers[: config.num_hidden_layers]; GPT-2 keeps n_layer.
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(layers)


def layer_config(model: nn.Module) -> dict[str, list]:
    """The model's per-layer config lists (``Architecture.per_layer_config``), copied: ``{key: values}``."""
    keys = architecture_of(model).per_layer_config
    return {k: list(v) for k in keys if (v := getattr(model.config, k, None)) is not None}


def set_layer_config_(model: nn.Module, values: dict[str, list], source_index: list[int]) -> None:
    """Set each per-layer config list of ``model`` to ``values[key]`` re-indexed: position p gets
    ``values[key][source_index[p]]`` (the attention type, rope flag, ... of the block standing there)."""
    for key, per_layer in values.items():
        setattr(model.config, key, [per_layer[i] for i in source_index])


def attention_projections(model: nn.Module, block: nn.Module) -> dict[str, nn.Module]:
    """The attention projections of one block, by their dotted name inside it."""
    return {path: block.get_submodule(path) for path in architecture_of(model).attention}


def hidden_size(model: nn.Module) -> int:
    """d, the width of the residual stream (``hidden_size``, GPT-2's ``n_embd``): a block maps (B, T, d) to
    (B, T, d)."""
    config = model.config
    return getattr(config, "hidden_size", None) or config.n_embd


def position_limit(model: nn.Module) -> int:
    """The longest sequence, in tokens, ``model`` can take (its ``Architecture.positions`` config value)."""
    return int(getattr(model.config, architecture_of(model).positions))
