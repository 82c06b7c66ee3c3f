"""Server-side evaluation: zero-shot rows once, then plug-in (and emulator fine-tuned) after rounds.

Offsite-Tuning's Table 1 rows (paper): full zero-shot, emulator zero-shot, emulator fine-tuned (emulator +
adapter) and plug-in (full model + adapter). The strategy calls ``ServerEvaluator`` as its ``evaluate_fn``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord
from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.adapters import (
    AdapterConfig,
    AdapterState,
    adapter_state,
    load_adapter_state_,
    prepare_adapter_,
)
from emulator.evaluation import MCResult, multiple_choice_accuracy
from emulator.plug_in import plug_in_
from emulator.tasks import MCExample
from strategies import keys

log = logging.getLogger(__name__)

FULL_ZS, EMULATOR_ZS, EMULATOR_FT, PLUG_IN = "Full-ZS", "Emulator-ZS", "Emulator-FT", "Plug-in"

# The full model's zero-shot result by ``reference_key``: it does not depend on the emulator, so a process
# that runs several configs on the same model and test set (``scaleot compare``) scores it once.
_FULL_ZERO_SHOT: dict[Hashable, MCResult] = {}


def result_row(result: MCResult) -> dict[str, Any]:
    """A results-table row (JSON-friendly) from a multiple-choice result."""
    return {m: float(getattr(result, m)) for m in keys.MEASURES} | {"n": result.n}


def per_example(result: MCResult) -> dict[str, list[int]]:
    """Per-example correctness (JSON-friendly), in test order, for paired comparisons."""
    return {"correct": list(result.correct), "correct_norm": list(result.correct_norm)}


def initial_adapter(
    model: nn.Module, positions: Mapping[int, int], config: AdapterConfig, seed: int
) -> AdapterState:
    """The round-0 global adapter: the emulator's own adapter blocks (or fresh LoRA factors, seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prepare_adapter_(model, positions, config)
    return adapter_state(model, positions)


class ServerEvaluator:
    """Scores the global adapter plugged into the full model and, when asked, inside the emulator.

    Args:
        full_model: the model owner's original model (its adapter blocks are overwritten by each plug-in).
        emulator_model: the emulator, loaded from the same bundle the clients use.
        positions: original block index -> position in the emulator's layer list, for the adapter blocks.
        tokenizer: the shared tokenizer.
        examples: test examples.
        adapter: full adapter blocks or LoRA.
        batch_size: scoring batch size.
        emulator_is_full: the emulator is the full model itself (method ``full``): its rows are copies of the
            full model's, not scored twice.
        progress: show a progress bar while scoring (on a terminal).
        reference_key: identifies (full model, test examples, scoring settings); the full model's zero-shot
            result is scored once per key in this process. None: always scored.

    Attributes:
        per_example: row name -> per-example correctness of its latest evaluation (``per_example``).
    """

    def __init__(
        self,
        full_model: nn.Module,
        emulator_model: nn.Module,
        positions: Mapping[int, int],
        tokenizer: PreTrainedTokenizerBase,
        examples: list[MCExample],
        adapter: AdapterConfig,
        batch_size: int = 16,
        emulator_is_full: bool = False,
        reference_key: Hashable | None = None,
        progress: bool = False,
    ) -> None:
        self.full_model, self.emulator_model = full_model, emulator_model
        self.positions, self.tokenizer, self.examples = dict(positions), tokenizer, examples
        self.adapter, self.batch_size = adapter, batch_size
        self.emulator_is_full, self.reference_key, self.progress = emulator_is_full, reference_key, progress
        self.per_example: dict[str, dict[str, list[int]]] = {}

    def zero_shot(self) -> dict[str, dict[str, Any]]:
        """Full-ZS and Emulator-ZS rows (before any adapter is plugged in)."""
        start = time.perf_counter()
        full = _FULL_ZERO_SHOT.get(self.reference_key) if self.reference_key is not None else None
        if full is None:
            full = self._score(self.full_model)
            if self.reference_key is not None:
                _FULL_ZERO_SHOT[self.reference_key] = full
        emulator = full if self.emulator_is_full else self._score(self.emulator_model)
        self.per_example |= {FULL_ZS: per_example(full), EMULATOR_ZS: per_example(emulator)}
        rows = {FULL_ZS: result_row(full), EMULATOR_ZS: result_row(emulator)}
        log.info(
            "zero-shot on %d test examples: full %.1f %%, emulator %.1f %% (%.1f s)",
            len(self.examples),
            100 * rows[FULL_ZS]["acc"],
            100 * rows[EMULATOR_ZS]["acc"],
            time.perf_counter() - start,
        )
        return rows

    def __call__(self, server_round: int, arrays: ArrayRecord, with_emulator: bool) -> dict[str, float]:
        """Plug-in (and emulator fine-tuned) metrics of the global adapter, named by ``strategies.keys``."""
        state = arrays.to_torch_state_dict()
        plug_in_(self.full_model, state, sorted(self.positions), self.adapter)
        plugged = self._score(self.full_model)
        self.per_example[PLUG_IN] = per_example(plugged)
        metrics = _named(keys.PLUGIN, plugged)
        if with_emulator:
            emulator = plugged if self.emulator_is_full else self._score_emulator(state)
            self.per_example[EMULATOR_FT] = per_example(emulator)
            metrics |= _named(keys.EMULATOR, emulator)
        return metrics | {keys.EVAL_N: float(len(self.examples))}

    def _score_emulator(self, state: AdapterState) -> MCResult:
        prepare_adapter_(self.emulator_model, self.positions, self.adapter)
        load_adapter_state_(self.emulator_model, self.positions, state)
        return self._score(self.emulator_model)

    def _score(self, model: nn.Module) -> MCResult:
        return multiple_choice_accuracy(
            model, self.tokenizer, self.examples, batch_size=self.batch_size, progress=self.progress
        )


def final_rows(
    zero_shot: Mapping[str, Any], last: Mapping[str, float] | None, emulator: Mapping[str, float] | None
) -> dict[str, dict[str, Any]]:
    """The results table: zero-shot rows, then the last plug-in and emulator fine-tuned evaluations."""
    rows = dict(zero_shot)
    for name, prefix, metrics in ((EMULATOR_FT, keys.EMULATOR, emulator), (PLUG_IN, keys.PLUGIN, last)):
        if metrics and f"{prefix}_acc" in metrics:
            row = {m: metrics[f"{prefix}_{m}"] for m in keys.MEASURES}
            rows[name] = row | {"n": int(metrics.get(keys.EVAL_N, 0))}
    return rows


def _named(prefix: str, result: MCResult) -> dict[str, float]:
    return {f"{prefix}_{m}": float(getattr(result, m)) for m in keys.MEASURES}
