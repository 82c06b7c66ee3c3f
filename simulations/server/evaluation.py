"""Server-side evaluation: zero-shot rows once (memoised), then plug-in (and emulator fine-tuned) by round.

Offsite-Tuning's Table 1 rows (paper): full zero-shot, emulator zero-shot, emulator fine-tuned (emulator +
adapter) and plug-in (full model + adapter). The strategy calls ``ServerEvaluator`` as its ``evaluate_fn``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.config import AdapterConfig
from emulator.data.tasks import MCExample
from emulator.evaluation.memo import memoised_accuracy
from emulator.evaluation.scoring import multiple_choice_accuracy
from emulator.results import (
    EMULATOR_FT,
    EMULATOR_ZS,
    FULL_ZS,
    PER_EXAMPLE,
    PLUG_IN,
    ROW_LABELS,
    MCResult,
    choice_spread,
    one_answer_note,
)
from emulator.tuning.adapters import (
    AdapterState,
    adapter_state,
    load_adapter_state_,
    prepare_adapter_,
)
from emulator.tuning.plug_in import plug_in_
from strategies import wire

log = logging.getLogger(__name__)


def per_example(result: MCResult) -> dict[str, list[int]]:
    """Per-example correctness (JSON-friendly), in test order, for paired comparisons, and the choice picked
    for each example (for ``emulator.results.choice_spread``)."""
    return {k: list(getattr(result, k)) for k in PER_EXAMPLE}


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
        max_length: token budget per scored sequence (``multiple_choice_accuracy``).
        emulator_is_full: the emulator is the full model itself (method ``full``): its rows are copies of the
            full model's, not scored twice.
        memo_dir: where zero-shot results are memoised (``emulator.evaluation.memo``); default the cache's.
            The full model's zero-shot row does not depend on the method, so every run on the same model and
            test set after the first reads it from there.
        full_model_sha256: ``model_fingerprint(full_model)`` if the caller has it (the memo key needs it).
        progress: show a progress bar while scoring (on a terminal).

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
        max_length: int = 512,
        emulator_is_full: bool = False,
        memo_dir: Path | None = None,
        full_model_sha256: str | None = None,
        progress: bool = False,
    ) -> None:
        self.full_model, self.emulator_model = full_model, emulator_model
        self.positions, self.tokenizer, self.examples = dict(positions), tokenizer, examples
        self.adapter, self.batch_size, self.max_length = adapter, batch_size, max_length
        self.emulator_is_full, self.memo_dir, self.progress = emulator_is_full, memo_dir, progress
        self.full_model_sha256 = full_model_sha256
        self.per_example: dict[str, dict[str, list[int]]] = {}

    def zero_shot(self) -> dict[str, MCResult]:
        """Full-ZS and Emulator-ZS rows (before any adapter is plugged in)."""
        start = time.perf_counter()
        full = self._zero_shot(self.full_model, ROW_LABELS[FULL_ZS], self.full_model_sha256)
        emulator = (
            full if self.emulator_is_full else self._zero_shot(self.emulator_model, ROW_LABELS[EMULATOR_ZS])
        )
        self.per_example |= {FULL_ZS: per_example(full), EMULATOR_ZS: per_example(emulator)}
        log.info(
            "zero-shot on %d test examples: full %.1f %%, emulator %.1f %% (%.1f s)",
            len(self.examples),
            100 * full.acc,
            100 * emulator.acc,
            time.perf_counter() - start,
        )
        return {FULL_ZS: full, EMULATOR_ZS: emulator}

    def __call__(self, server_round: int, arrays: ArrayRecord, with_emulator: bool) -> dict[str, float]:
        """Plug-in (and emulator fine-tuned) metrics of the global adapter, named by ``strategies.wire``."""
        state = arrays.to_torch_state_dict()
        plug_in_(self.full_model, state, sorted(self.positions), self.adapter)
        plugged = self._score(self.full_model, f"{ROW_LABELS[PLUG_IN]} (round {server_round})")
        self.per_example[PLUG_IN] = per_example(plugged)
        metrics = plugged.to_metrics(wire.PLUG_IN)
        if with_emulator:
            name = f"{ROW_LABELS[EMULATOR_FT]} (round {server_round})"
            emulator = plugged if self.emulator_is_full else self._score_emulator(state, name)
            self.per_example[EMULATOR_FT] = per_example(emulator)
            metrics |= emulator.to_metrics(wire.EMULATOR_FT)
        return metrics | {wire.EVAL_N: float(len(self.examples))}

    def _score_emulator(self, state: AdapterState, name: str) -> MCResult:
        prepare_adapter_(self.emulator_model, self.positions, self.adapter)
        load_adapter_state_(self.emulator_model, self.positions, state)
        return self._score(self.emulator_model, name)

    def _zero_shot(self, model: nn.Module, name: str, model_sha256: str | None = None) -> MCResult:
        # Zero-shot rows do not change between runs on the same model and test set: read them from the memo.
        return self._score(model, name, memoised_accuracy, directory=self.memo_dir, model_sha256=model_sha256)

    def _score(
        self, model: nn.Module, name: str, score: Callable = multiple_choice_accuracy, **options: Any
    ) -> MCResult:
        result = score(
            model,
            self.tokenizer,
            self.examples,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress,
            **options,
        )
        if note := one_answer_note(name, choice_spread(result.predicted)):
            log.warning("%s", note)
        return result
