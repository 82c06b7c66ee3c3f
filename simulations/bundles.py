"""The emulator bundle a run distributes: built once per (source model, emulator config), then reused.

Bundles live under ``emulator.models.cache_dir() / "bundles"``, one directory per hash of the model name and
the emulator config. A bundle is written to a temporary directory and renamed into place, so a half-written
one is never taken for complete (and two runs building the same one at once both end with a valid bundle).
SRC settings and ``importance-drop`` are derived from the bundle of ScaleOT without SRC with the same stage 1
(built first if absent), so a sweep over β pays for stage 1 once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.assembly import build_emulator, derive_emulator, stage1_twin
from emulator.bundle import load_emulator, save_bundle
from emulator.config import EmulatorConfig
from emulator.models import cache_dir

log = logging.getLogger(__name__)

_FORMAT = 1  # bump when the bundle layout changes, so stale cached bundles are not reused


def bundle_dir(model_name: str, config: EmulatorConfig) -> Path:
    """Where the bundle of ``model_name`` compressed with ``config`` lives in the cache."""
    spec = json.dumps(
        {"model": model_name, "emulator": config.build_dict(), "format": _FORMAT}, sort_keys=True
    )
    digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name).strip("_")[-40:]
    return cache_dir() / "bundles" / f"{safe}-{config.method}-{digest}"


def ensure_bundle(
    model_name: str, config: EmulatorConfig, full_model: nn.Module, tokenizer: PreTrainedTokenizerBase
) -> Path:
    """The cached bundle for (``model_name``, ``config``), building it from ``full_model`` if absent.

    ``full_model`` is not modified.
    """
    directory = bundle_dir(model_name, config)
    if (directory / "manifest.json").is_file():
        log.info("emulator: reusing %s", directory)
        return directory
    twin = stage1_twin(config)
    if twin is not None:  # SRC settings and importance-drop share the stage 1 of ScaleOT without SRC
        base, _ = load_emulator(ensure_bundle(model_name, twin, full_model, tokenizer))
        log.info(
            "emulator: deriving %s (%s) from the stage-1 twin into %s", config.method, model_name, directory
        )
        emulator = derive_emulator(base, config)
    else:
        log.info("emulator: building %s (%s) into %s", config.method, model_name, directory)
        emulator = build_emulator(full_model, tokenizer, config, progress=True)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_bundle(emulator, tmp, model_name, tokenizer)
    try:
        tmp.rename(directory)
    except OSError:  # another process finished the same bundle first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("emulator: built in %.1f s", emulator.build_seconds)
    return directory
