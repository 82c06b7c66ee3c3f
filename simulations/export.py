"""``scaleot export RUN_DIR --out DIR``: a run's final adapter as artefacts transformers and peft load.

The same export runs at the end of every run, into the run directory itself (``plug-in/`` and, for LoRA
adapters, ``peft-adapter/``; see ``emulator.export``). It needs only the run directory: the run's
``config.toml`` names the model and the adapter, ``adapter.safetensors`` holds the final global adapter.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def export_run(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Export the final adapter of ``run_dir`` into ``out`` (default: the run directory).

    Returns:
        ``{"plug_in": path}`` plus ``{"peft_adapter": path}`` for LoRA adapters.

    Raises:
        ValueError: ``run_dir`` has no ``config.toml`` or no final ``adapter.safetensors`` (an unfinished
            run), or the adapter does not fit the model.
    """
    run_dir = Path(run_dir)
    config_path, adapter_path = run_dir / "config.toml", run_dir / "adapter.safetensors"
    for path in (config_path, adapter_path):
        if not path.is_file():
            raise ValueError(f"RUN_DIR={run_dir} is not a finished run directory: {path.name} is missing")
    from safetensors.torch import load_file

    from emulator.adapters import adapter_layers
    from emulator.architectures import num_layers
    from emulator.export import export_plug_in
    from emulator.models import load_model
    from simulations.config import load_config

    config = load_config(config_path)
    model, tokenizer = load_model(config.model, device="cpu")
    layers = adapter_layers(num_layers(model), config.emulator.adapter_bottom, config.emulator.adapter_top)
    state = load_file(str(adapter_path))
    written = export_plug_in(
        model, tokenizer, state, layers, config.adapter, Path(out or run_dir), base_model=config.model
    )
    log.info("exported %s", ", ".join(str(p) for p in written.values()))
    return written


def export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``scaleot export``."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    parser.add_argument("--out", type=Path, help="where to write (default: RUN_DIR)")


def run_export(args: argparse.Namespace) -> None:
    """``scaleot export``: print the directories written."""
    for kind, path in export_run(args.run_dir, args.out).items():
        print(f"{kind}: {path}")
