"""Emulator assembly (ScaleOT stage 2) and the baselines built the same way.

ScaleOT (paper): the ``round(α·M)`` least important middle blocks are replaced by their harmonizers, the kept
middle blocks get Selective Rank Compression; adapters (bottom and top blocks), embeddings, final norm and LM
head stay as they are. Baselines (Offsite-Tuning): ``uniform`` keeps ``k = M − round(α·M)`` middle blocks at
``round(i·(M−1)/(k−1))`` and drops the rest; ``uniform+distill`` distils those kept blocks on the public
corpus; ``full`` is the full model itself (the ``full`` fine-tuning baseline). ``importance-drop`` (ours,
issue 9) runs ScaleOT's stage 1 and drops the blocks ScaleOT would replace, without harmonizers, so a gain
over LayerDrop can be split between the ranking and the harmonizers. SRC applies to kept middle blocks of
every method when ``rank_keep < 1`` (``src_layers='least-important'``: the lowest-scored ``src_share``).
``crash`` (CRaSh's layer sharing, ``emulator.scaleot.layer_sharing``) removes the blocks uniform LayerDrop
removes and fills each place with a copy of its nearest kept middle block; ``share_replaced`` puts such a copy
before each ScaleOT harmonizer. Copies are made again after SRC, so a copy is always its source as shipped.

Ours: the emulator owns every tensor it holds (embeddings and LM head included, copied): it is an independent
artefact that gets shipped, moved, fine-tuned and saved, and an alias into the model owner's full model would
let an in-place update on one silently change the other. The full model passed in is never modified: stage 1
and distillation run on a frozen view sharing its weights. Kept blocks have their attention ``layer_idx``
pointed at their new position so KV caches stay consistent in the shorter layer list.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, get_args

import torch
from torch import nn

from emulator.config import EmulatorConfig
from emulator.lm.architectures import get_layers, set_layers_
from emulator.lm.surgery import count_parameters, frozen_view, reindex_attention_, shared_copy
from emulator.scaleot.blocks import (
    LayerEntry,
    LayerKind,
    lowest_per_group,
    middle_blocks,
    replacement_groups,
    round_half_up,
)
from emulator.scaleot.distillation import distill_middle_
from emulator.scaleot.layer_replace import dynamic_layer_replace
from emulator.scaleot.layer_sharing import SharedBlockHarmonizer, share_blocks_, share_plan
from emulator.scaleot.rank_compression import compress_attention_

log = logging.getLogger(__name__)

_KINDS: tuple[LayerKind, ...] = get_args(LayerKind)


@dataclass
class Emulator:
    """A built emulator and how it was built.

    Attributes:
        model: runnable causal LM whose layer list was swapped; every parameter frozen.
        config: the settings it was built with.
        layer_map: one entry per original block, in original order (dropped blocks included).
        scores: stage-1 importance score per middle block (``scaleot`` only).
        loss_curve: stage-1 harmonizer loss (``scaleot``) or distillation loss (``uniform+distill``) per step.
        reward_curve: stage-1 mean policy reward per policy step.
        build_seconds: wall time of ``build_emulator``.
        stage1_seconds: wall and CPU time of stage 1 (0 without one; ``cached_blocks`` is what cuts it).
        num_parameters: distinct parameters of the emulator.
        full_num_parameters: distinct parameters of the full model.
        source_config: the full model's transformers config, as a dict.
    """

    model: nn.Module
    config: EmulatorConfig
    layer_map: list[LayerEntry]
    scores: dict[int, float] = field(default_factory=dict)
    loss_curve: list[float] = field(default_factory=list)
    reward_curve: list[float] = field(default_factory=list)
    build_seconds: float = 0.0
    stage1_seconds: tuple[float, float] = (0.0, 0.0)
    num_parameters: int = 0
    full_num_parameters: int = 0
    source_config: dict[str, Any] = field(default_factory=dict)

    def adapter_positions(self) -> dict[int, int]:
        """Original index -> emulator position of every adapter block (for ``emulator.tuning.adapters``)."""
        return {e.original: e.position for e in self.layer_map if e.kind == "adapter"}

    def source_index(self) -> list[int]:
        """Original index of the block standing at each emulator position."""
        placed = sorted((e.position, e.original) for e in self.layer_map if e.position is not None)
        return [original for _, original in placed]

    def summary(self) -> str:
        """One line: block counts per kind and the parameter share, e.g. ``4 adapter, 7 harmonizer, ...``."""
        kinds = [e.kind for e in self.layer_map]
        counts = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
        share = self.num_parameters / max(self.full_num_parameters, 1)
        return f"{counts}; {self.num_parameters:,} of {self.full_num_parameters:,} parameters ({share:.1%})"

    def describe(self) -> str:
        """One line per kind (``adapter: 0 1 28 29``, ``harmonizer: 5 9``, ``shared: 3←2``, ...) and one for
        the sizes."""
        lines = []
        for kind in _KINDS:
            entries = [e for e in self.layer_map if e.kind == kind]
            if entries:
                ranks = _rank_summary(entries[0]) if kind == "compressed" else ""
                blocks = [
                    f"{e.original}←{e.source}" if e.source is not None else str(e.original) for e in entries
                ]
                lines.append(f"{kind}{ranks}: {' '.join(blocks)}")
        share = self.num_parameters / max(self.full_num_parameters, 1)
        lines.append(f"parameters: {self.num_parameters:,} / {self.full_num_parameters:,} ({share:.1%})")
        return "\n".join(lines)


def uniform_choose(num_middle: int, keep: int) -> list[int]:
    """Offsite-Tuning's ``uniform_choose_layers``: ``round(i·(M−1)/(k−1))``, i < k (keeps first and last)."""
    if keep <= 0:
        return []
    if keep == 1:
        return [0]
    stride = (num_middle - 1) / (keep - 1)
    return [round(i * stride) for i in range(keep)]  # Python rounding, as Offsite-Tuning


def build_emulator(
    model: nn.Module,
    config: EmulatorConfig,
    public_blocks: torch.Tensor | None = None,
    progress: bool = True,
) -> Emulator:
    """Build an emulator of ``model`` as ``config.method`` says; ``model`` is not modified.

    Args:
        model: the full causal LM (a supported family).
        config: the emulator settings.
        public_blocks: (N, T) ``torch.long`` token blocks of the public corpus, which stage 1 and
            distillation train on (``emulator.data.corpus.public_blocks`` reads them as ``config.data``
            says); the last tenth (at least one batch) is held out for the policy steps. Needed by the
            methods that read public text, ignored by the others.
        progress: log stage progress at INFO (else DEBUG).

    Returns:
        The emulator, frozen, on the model's device.

    Raises:
        ValueError: the adapters leave no middle block, ``alpha`` replaces nothing per group (scaleot),
            layer sharing is asked for but ``alpha`` keeps no middle block to copy, or a method that trains
            on public text gets no ``public_blocks``.
    """
    start = time.perf_counter()
    num_layers = len(get_layers(model))
    middle = middle_blocks(num_layers, config.adapter_bottom, config.adapter_top)
    replaced: list[int] = []
    scores: dict[int, float] = {}
    curves: tuple[list[float], list[float]] = ([], [])
    traits = config.traits
    staged = traits.stage1 and config.alpha > 0
    needs_data = staged or traits.distills
    if needs_data and public_blocks is None:
        raise ValueError(
            f"emulator.method={config.method!r} trains on the public corpus; pass public_blocks, its (N, T) "
            "token blocks (emulator.data.corpus.public_blocks reads them)"
        )
    train, heldout = _split_blocks(public_blocks, config) if needs_data else (None, None)
    harmonizers = {}
    stage1_seconds = (0.0, 0.0)
    if staged:
        stage1 = dynamic_layer_replace(model, train, heldout, config, progress)
        scores, curves = stage1.scores, (stage1.loss_curve, stage1.reward_curve)
        stage1_seconds = (stage1.seconds, stage1.cpu_seconds)
        groups = replacement_groups(len(middle), config.stage1.group_size, config.stage1.replace_scope)
        values = torch.tensor([scores[i] for i in middle])
        replaced = [middle[k] for k in lowest_per_group(values, groups, config.alpha)]
        if config.selection == "uniform":  # as many blocks, spread as uniform LayerDrop spreads its kept ones
            kept_uniform = _uniform_kept(middle, len(middle) - len(replaced))
            replaced = [i for i in middle if i not in kept_uniform]
        if traits.harmonizers:
            harmonizers = {i: stage1.harmonizers[i] for i in replaced}
    kept = _kept_middle(config, middle, replaced)
    sources = share_plan(config, middle, kept, replaced)
    emulator_model, layer_map = _assemble(model, config, middle, kept, harmonizers, sources)
    if traits.distills:
        positions = [e.position for e in layer_map if e.kind == "original"]
        curves = (
            distill_middle_(
                emulator_model, frozen_view(model), positions, middle[-1], train, config, progress
            ),
            [],
        )
    layer_map = _compress_(emulator_model, layer_map, config, scores)
    share_blocks_(emulator_model, layer_map)
    emulator = Emulator(
        model=emulator_model,
        config=config,
        layer_map=layer_map,
        scores=scores,
        loss_curve=curves[0],
        reward_curve=curves[1],
        stage1_seconds=stage1_seconds,
        num_parameters=count_parameters(emulator_model),
        full_num_parameters=count_parameters(model),
        source_config=json.loads(model.config.to_json_string(use_diff=False)),
    )
    emulator.build_seconds = time.perf_counter() - start
    level = logging.INFO if progress else logging.DEBUG
    log.log(
        level, "emulator %s built in %.1f s: %s", config.method, emulator.build_seconds, emulator.summary()
    )
    return emulator


def stage1_twin(config: EmulatorConfig) -> EmulatorConfig | None:
    """The ScaleOT config without SRC whose stage 1 ``config`` shares, or None (no stage 1, or itself).

    Stage 1 is the costly part of a build; ``importance-drop`` and SRC settings only change what happens
    after it, so ``derive_emulator`` makes them from the twin's emulator instead of repeating stage 1.
    """
    base = config.traits.derived_from
    if base is None or config.alpha == 0:
        return None
    twin = config.updated(method=base, rank_keep=1.0)
    return None if twin.build_dict() == config.build_dict() else twin


def derive_emulator(base: Emulator, config: EmulatorConfig) -> Emulator:
    """The emulator ``config`` builds, made from ``base``, the emulator of ``stage1_twin(config)``.

    Equal to ``build_emulator(model, config, public_blocks)`` (same stage 1, then the replaced blocks dropped
    for ``importance-drop`` and SRC on the kept middle blocks); ``base`` is not modified.

    Raises:
        ValueError: ``base`` was not built with ``stage1_twin(config)``.
    """
    twin = stage1_twin(config)
    if twin is None or base.config.build_dict() != twin.build_dict():
        raise ValueError(
            f"emulator of method={base.config.method!r} rank_keep={base.config.src.rank_keep} is not the "
            f"stage-1 twin of method={config.method!r} rank_keep={config.src.rank_keep}; "
            "build it with build_emulator"
        )
    start = time.perf_counter()
    model, layer_map = copy.deepcopy(base.model), list(base.layer_map)
    if not config.traits.harmonizers:  # the twin's harmonizers: their blocks are dropped instead
        layer_map = _drop_harmonizers_(model, layer_map)
    layer_map = _compress_(model, layer_map, config, base.scores)
    share_blocks_(model, layer_map)
    return Emulator(
        model=model,
        config=config,
        layer_map=layer_map,
        scores=dict(base.scores),
        loss_curve=list(base.loss_curve),
        reward_curve=list(base.reward_curve),
        build_seconds=base.build_seconds + time.perf_counter() - start,
        stage1_seconds=base.stage1_seconds,
        num_parameters=count_parameters(model),
        full_num_parameters=base.full_num_parameters,
        source_config=dict(base.source_config),
    )


def _drop_harmonizers_(model: nn.Module, layer_map: list[LayerEntry]) -> list[LayerEntry]:
    layers = get_layers(model)
    kept = [e for e in layer_map if e.position is not None and e.kind != "harmonizer"]
    # Per-layer config entries are indexed by the current positions, not the original indices.
    set_layers_(model, [layers[e.position] for e in kept], [e.position for e in kept])
    new_position = {e.original: k for k, e in enumerate(kept)}
    for position, block in enumerate(get_layers(model)):
        reindex_attention_(block, position)
    return [
        LayerEntry(e.original, "dropped", None)
        if e.original not in new_position
        else replace(e, position=new_position[e.original])
        for e in layer_map
    ]


def _split_blocks(blocks: torch.Tensor, config: EmulatorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    held = max(config.data.batch_size, len(blocks) // 10)
    if len(blocks) < 2 * held:
        return blocks, blocks  # too little text to hold any out; the policy then scores on training blocks
    return blocks[:-held], blocks[-held:]


def _uniform_kept(middle: list[int], keep: int) -> list[int]:
    """The ``keep`` blocks of ``middle`` (original indices) that uniform LayerDrop keeps."""
    return [middle[k] for k in uniform_choose(len(middle), keep)]


def _kept_middle(config: EmulatorConfig, middle: list[int], replaced: list[int]) -> list[int]:
    traits = config.traits
    if traits.removes == "uniform":
        keep = len(middle) - round_half_up(config.alpha * len(middle))
        return _uniform_kept(middle, keep)
    if traits.removes == "lowest-scores" and not traits.harmonizers:
        return [i for i in middle if i not in replaced]
    return list(middle)  # full, and harmonizers: every middle block has a place (original or harmonizer)


def _assemble(
    model: nn.Module,
    config: EmulatorConfig,
    middle: list[int],
    kept: list[int],
    harmonizers: dict[int, nn.Module],
    sources: dict[int, int],
) -> tuple[nn.Module, list[LayerEntry]]:
    view = frozen_view(model)
    originals = list(get_layers(view))
    modules: list[nn.Module] = []
    layer_map: list[LayerEntry] = []
    for index, block in enumerate(originals):
        source = sources.get(index)
        copied = shared_copy(originals[source], index) if source is not None else None
        if index not in middle:
            kind, module = "adapter", block
        elif index in harmonizers:
            kind, module = "harmonizer", harmonizers[index]
            if copied is not None:
                kind, module = "shared+harmonizer", SharedBlockHarmonizer(copied, module)
        elif index in kept:
            kind, module = "original", block
        elif copied is not None:
            kind, module = "shared", copied
        else:
            layer_map.append(LayerEntry(index, "dropped", None))
            continue
        layer_map.append(LayerEntry(index, kind, len(modules), source=source))
        modules.append(module)
    # A copy stands for its source in the per-layer config (attention type, rope), as it runs like it.
    placed = [e for e in layer_map if e.position is not None]
    set_layers_(view, modules, [e.original if e.source is None else e.source for e in placed])
    emulator_model = copy.deepcopy(
        view
    )  # the emulator's own tensors; nothing aliases the full model any more
    emulator_model.requires_grad_(False)
    for position, block in enumerate(get_layers(emulator_model)):
        reindex_attention_(block, position)
    return emulator_model, layer_map


def _compress_(
    emulator_model: nn.Module, layer_map: list[LayerEntry], config: EmulatorConfig, scores: dict[int, float]
) -> list[LayerEntry]:
    kept = [e for e in layer_map if e.kind == "original"]
    if config.src.src_layers == "least-important":
        kept = sorted(kept, key=lambda e: (scores.get(e.original, 0.0), e.original))
        kept = kept[: math.ceil(round(config.src.src_share * len(kept), 6))]
    targets = [e.position for e in kept]
    if config.src.rank_keep >= 1.0 or not targets:
        return layer_map
    report = compress_attention_(
        emulator_model,
        targets,
        config.src.rank_keep,
        config.src.src_rank,
        config.src.src_projections,
        config.src.src_only_smaller,
    )
    updated = []
    for entry in layer_map:
        done = report.get(entry.position, {}) if entry.kind == "original" else {}
        if any(info.rank < info.full_rank for info in done.values()):
            ranks = {path: info.rank for path, info in done.items()}
            factorized = tuple(path for path, info in done.items() if info.factorized)
            entry = LayerEntry(entry.original, "compressed", entry.position, ranks, factorized)
        updated.append(entry)
    return updated


def _rank_summary(entry: LayerEntry) -> str:
    return (
        " (ranks "
        + ", ".join(f"{path.rsplit('.', 1)[-1]} {rank}" for path, rank in entry.ranks.items())
        + ")"
    )
