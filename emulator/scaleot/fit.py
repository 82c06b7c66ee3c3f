"""Settings that must fit the loaded model, checked once where the model is first known (before any emulator
build or round): sequence lengths against its position limit, adapter counts against its depth, ranks against
its width, replacement groups against its middle.

The config dataclasses check what they can alone; what needs the model (``emulator.lm.architectures``) is
here, so a wrong value is one line naming the field, the value and the limit instead of an index error inside
an embedding in every client.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.config import AdapterConfig, EmulatorConfig
from emulator.lm.architectures import hidden_size, num_layers, position_limit
from emulator.scaleot.blocks import lowest_per_group, replacement_groups, round_half_up


def check_fits(
    model: nn.Module,
    emulator: EmulatorConfig | None = None,
    adapter: AdapterConfig | None = None,
    lengths: Mapping[str, int] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Raise if a setting does not fit ``model``.

    Args:
        model: the full model (a supported family).
        emulator: the emulator settings (checked: adapter counts vs depth; for the methods that read the
            public corpus, ``seq_len`` vs positions; for those with harmonizers, ``harmonizer_rank`` vs
            width; for those that run stage 1, ``group_size`` / ``alpha`` vs the middle; for those that
            share blocks, that ``alpha`` keeps one).
        adapter: the adapter settings (checked: ``lora_rank`` vs width in LoRA mode).
        lengths: further token budgets by field name, e.g. ``{"client.max_length": 256}``, each checked
            against the position limit.
        tokenizer: the tokenizer that comes with the model (checked: its ids fit the embedding table).

    Raises:
        ValueError: the first setting that does not fit; the message names the field, its value and the
            model's limit.
    """
    limit, width = position_limit(model), hidden_size(model)
    if emulator is not None and emulator.traits.reads_corpus:  # stage 1 or distillation: seq_len blocks
        lengths = {**(lengths or {}), "emulator.seq_len": emulator.data.seq_len}
    for name, value in (lengths or {}).items():
        _require(value <= limit, name, value, f"<= {limit}, the model's position limit")
    if adapter is not None and adapter.mode == "lora":
        _require(
            adapter.lora_rank <= width, "adapter.lora_rank", adapter.lora_rank, f"<= {width}, the hidden size"
        )
    if tokenizer is not None:
        rows = model.get_input_embeddings().num_embeddings
        _require(
            len(tokenizer) <= rows, "model's tokenizer size", len(tokenizer), f"<= {rows} embedding rows"
        )
    if emulator is not None:
        _check_emulator(emulator, num_layers(model), width)


def _check_emulator(emulator: EmulatorConfig, depth: int, width: int) -> None:
    adapters = emulator.adapter_bottom + emulator.adapter_top
    _require(
        adapters < depth,
        "emulator.adapter_bottom + emulator.adapter_top",
        adapters,
        f"< {depth}, the model's number of blocks (at least one middle block)",
    )
    middle = depth - adapters
    traits = emulator.traits
    if traits.harmonizers:
        _require(
            emulator.stage1.harmonizer_rank <= width,
            "emulator.harmonizer_rank",
            emulator.stage1.harmonizer_rank,
            f"<= {width}, the model's hidden size",
        )
    if traits.stage1:
        if emulator.stage1.replace_scope == "group":
            _require(
                emulator.stage1.group_size <= middle,
                "emulator.group_size",
                emulator.stage1.group_size,
                f"<= {middle}, the model's middle blocks",
            )
        groups = replacement_groups(middle, emulator.stage1.group_size, emulator.stage1.replace_scope)
        sizes = [len(g) for g in groups]
        replaced = lowest_per_group(torch.zeros(middle), groups, emulator.alpha)
        _require(
            emulator.alpha == 0 or bool(replaced),
            "emulator.alpha",
            emulator.alpha,
            f"0 or large enough to replace a block in groups of {sizes}",
        )
        # round(α·|G|) per group can land far from α when groups are small (α 0.125 in groups of 4 replaces
        # one block in four): refuse a share more than α/2 away rather than run another α under this name.
        share = len(replaced) / middle
        _require(
            emulator.alpha == 0 or abs(share - emulator.alpha) <= emulator.alpha / 2,
            "emulator.alpha",
            emulator.alpha,
            f"a share that groups of {sizes} can replace (they would replace {len(replaced)} of {middle} "
            f"middle blocks, {share:.2f}); raise group_size or use replace_scope='global'",
        )
        _require(
            not emulator.share_replaced or len(replaced) < middle,
            "emulator.alpha",
            emulator.alpha,
            f"small enough to keep a middle block for share_replaced to copy (it replaces all {middle})",
        )
    if traits.shares:
        _require(
            round_half_up(emulator.alpha * middle) < middle,
            "emulator.alpha",
            emulator.alpha,
            f"small enough to keep one of the {middle} middle blocks for method={emulator.method!r} to copy",
        )


def _require(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} does not fit the model; it must be {allowed}")
