"""The emulator bundle a run distributes: built once per (source model content, corpus, emulator config), then
reused.

Bundles live under ``emulator.lm.models.cache_dir() / "bundles"``, one directory per hash of what the emulator
is derived from: the source model's content (``model_fingerprint``: config and weights, not its name or path,
so two checkpoints saved at the same path never share an emulator), the public corpus's text where the method
reads it, and the emulator config. The same provenance is stored in the manifest and checked before reuse: a
bundle whose manifest disagrees is rebuilt, never taken as current. A bundle is written to a temporary
directory and renamed into place, so a half-written one is never taken for complete (and two runs building
the same one at once both end with a valid bundle). SRC settings and ``importance-drop`` are derived from the
bundle of ScaleOT without SRC with the same stage 1 (built first if absent), so a sweep over β pays for
stage 1
once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.config import EmulatorConfig
from emulator.data.corpus import public_blocks
from emulator.files import replacing
from emulator.lm.models import cache_dir, model_fingerprint
from emulator.scaleot.assembly import build_emulator, derive_emulator, stage1_twin
from emulator.scaleot.bundle import load_emulator, read_manifest, save_bundle

log = logging.getLogger(__name__)

_FORMAT = 3  # bump when the bundle layout or key changes, so stale cached bundles are not reused


def provenance(model_sha256: str, config: EmulatorConfig) -> dict[str, Any]:
    """What a bundle of ``config`` is derived from: the model's content hash, the emulator settings that shape
    it and, for the methods that read the public corpus, the sha256 of the corpus's text."""
    spec: dict[str, Any] = {"model": model_sha256, "emulator": config.build_dict(), "format": _FORMAT}
    if config.traits.reads_corpus:
        from emulator.data.corpus import public_corpus

        text = public_corpus("train", config.data.corpus, exclude=config.data.corpus_exclude)
        spec["corpus"] = hashlib.sha256(text.encode()).hexdigest()
    return spec


def bundle_dir(model_name: str, spec: dict[str, Any]) -> Path:
    """Where the bundle of provenance ``spec`` lives in the cache (``model_name`` names it for people)."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name).strip("_")[-40:]
    return cache_dir() / "bundles" / f"{safe}-{spec['emulator']['method']}-{digest}"


def ensure_bundle(
    model_name: str,
    config: EmulatorConfig,
    full_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    model_sha256: str | None = None,
) -> Path:
    """The cached bundle of ``full_model`` compressed with ``config``, building it if absent or stale.

    Args:
        model_name: the model's name, for the directory name and the manifest.
        config: the emulator settings.
        full_model: the source model (not modified).
        tokenizer: its tokenizer.
        model_sha256: ``model_fingerprint(full_model)`` if the caller has it (else computed here).
    """
    spec = provenance(model_sha256 or model_fingerprint(full_model), config)
    directory = bundle_dir(model_name, spec)
    manifest = directory / "manifest.json"
    if manifest.is_file():
        try:
            built_from = read_manifest(directory).get("provenance")
        except ValueError as error:  # a damaged manifest (truncated, say): the bundle is built again
            log.warning("emulator: %s; rebuilding it", " ".join(str(error).split()))
            built_from = None
        if built_from == json.loads(json.dumps(spec)):
            log.info("emulator: reusing %s", directory)
            return directory
        if built_from is not None:
            log.warning(
                "emulator: %s was built from other inputs than its key says; rebuilding it", directory
            )
        shutil.rmtree(directory, ignore_errors=True)
    twin = stage1_twin(config)
    if twin is not None:  # SRC settings and importance-drop share the stage 1 of ScaleOT without SRC
        base_dir = ensure_bundle(model_name, twin, full_model, tokenizer, spec["model"])
        base, _ = load_emulator(base_dir)
        log.info("emulator: deriving %s (%s) from %s into %s", config.method, model_name, base_dir, directory)
        emulator = derive_emulator(base, config)
    else:
        log.info("emulator: building %s (%s) into %s", config.method, model_name, directory)
        emulator = build_emulator(full_model, config, public_blocks(tokenizer, config), progress=True)
    # A full disk, say, leaves no half bundle in the cache; another process that finished the same bundle
    # first keeps its own.
    with replacing(directory, keep_existing=True) as tmp:
        save_bundle(emulator, tmp, model_name, tokenizer, provenance=spec)
    log.info("emulator: built in %.1f s", emulator.build_seconds)
    return directory
