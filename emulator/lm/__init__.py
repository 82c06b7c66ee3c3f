"""Causal LMs (ours): loading (the embedded SmolLM2, tiny random models, GGUF, hub ids), the one table of
per-family structure every other package asks, and model surgery (frozen views, block copies, hooks).
"""

from emulator.lm.architectures import (
    ARCHITECTURES,
    architecture_of,
    backbone,
    get_layers,
    head_logits,
    hidden_size,
    num_layers,
)
from emulator.lm.models import MODEL_NAMES, cache_dir, load_model, load_tokenizer, model_fingerprint
from emulator.lm.surgery import count_parameters, frozen_view

__all__ = [
    "ARCHITECTURES",
    "MODEL_NAMES",
    "architecture_of",
    "backbone",
    "cache_dir",
    "count_parameters",
    "frozen_view",
    "get_layers",
    "head_logits",
    "hidden_size",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "num_layers",
]
