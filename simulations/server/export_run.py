"""``scaleot export RUN_DIR --out DIR``: a run's final adapter as artefacts transformers and peft load.

The same export runs at the end of every run, into the run directory itself (``plug-in/`` and, for LoRA
adapters, ``peft-adapter/``; see ``emulator.tuning.export``). It needs only the run directory: the run's
``config.toml`` names the model and the adapter, ``adapter.safetensors`` holds the final global adapter and
``metrics.json`` the content hash of the model it was trained on, checked: by now the name or path may hold
another model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from emulator.results import EMULATOR_FT, FULL_ZS, PLUG_IN

log = logging.getLogger(__name__)

_RUN_FILES = ("config.toml", "metrics.json", "adapter.safetensors")  # what an export reads
# The results rows whose model a finished run directory rebuilds (simulations.harness.run_model).
RUN_ROWS = (FULL_ZS, EMULATOR_FT, PLUG_IN)
_OUT_ALLOWED = "give a directory that can be written (plug-in/ and peft-adapter/ in it are replaced)"
# A directory holding one of these holds a run: its plug-in/ and peft-adapter/ are that run's.
_RUN_MARKERS = ("config.toml", "config.json", "metrics.json")


def export_run(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Export the final adapter of ``run_dir`` into ``out`` (default: the run directory).

    Returns:
        ``{"plug_in": path}`` plus ``{"peft_adapter": path}`` for LoRA adapters.

    Raises:
        ValueError: ``run_dir`` has no ``config.toml``, ``metrics.json`` or final ``adapter.safetensors`` (an
            unfinished run), one of them is unreadable, ``out`` is a file, cannot be created or holds another
            run, the model found under the run's name is not the one it trained on, or the adapter does not
            fit the model.
        FileWriteError: an artefact could not be written.
    """
    run_dir = Path(run_dir)
    missing = [name for name in _RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ValueError(
            f"RUN_DIR={run_dir} is not a finished run directory: {', '.join(missing)} {verb} missing"
        )
    from emulator.files import check_out_dir, read_tensors
    from emulator.lm.architectures import num_layers
    from emulator.scaleot.blocks import adapter_layers
    from emulator.tuning.export import export_plug_in
    from simulations.run_config import load_config

    config = load_config(run_dir / "config.toml")
    if out is not None:  # before the model loads: a file there failed only after it, with a bare errno
        check_out_dir(Path(out), "--out", _OUT_ALLOWED)
        check_not_another_run(run_dir, Path(out))
    state = read_tensors(run_dir / "adapter.safetensors")  # before the model: a truncated file fails at once
    model, tokenizer = load_run_full_model(run_dir, config.model)
    layers = adapter_layers(num_layers(model), config.emulator.adapter_bottom, config.emulator.adapter_top)
    written = export_plug_in(
        model, tokenizer, state, layers, config.adapter, Path(out or run_dir), base_model=config.model
    )
    log.info("exported %s", ", ".join(str(p) for p in written.values()))
    return written


def check_not_another_run(run_dir: Path, out: Path) -> None:
    """Refuse an ``--out`` that holds another run than ``run_dir``: its exports are that run's, and replacing
    them would leave it with another run's model beside its own metrics (a directory holds one run, as for
    ``scaleot simulate --out``).

    Raises:
        ValueError: ``out`` is not ``run_dir`` and holds a run's config.toml, config.json or metrics.json.
    """
    if out.resolve() == run_dir.resolve():
        return
    held = [name for name in _RUN_MARKERS if (out / name).is_file()]
    if held:
        raise ValueError(
            f"--out={out} holds another run ({', '.join(held)}); a run directory holds one run, and "
            "exporting there would replace its plug-in/ and peft-adapter/: give a directory that holds no "
            f"run, or drop --out to export into {run_dir}"
        )


def remove_exports(run_dir: Path, rewritten: bool) -> list[str]:
    """Remove ``plug-in/`` and ``peft-adapter/`` from ``run_dir`` before a resume trains further rounds: they
    hold an earlier round's adapter, and a user loading them after those rounds would silently get an older
    model than ``adapter.safetensors`` and report.md describe. They are derived files, rewritable at any time.

    Args:
        rewritten: the resumed run writes them again when it finishes (``output.export_plug_in``); the log
            line says so, or how to rewrite them.

    Returns:
        The names removed.
    """
    from emulator.files import remove
    from emulator.tuning.export import PEFT_ADAPTER_DIR, PLUG_IN_DIR

    removed = [name for name in (PLUG_IN_DIR, PEFT_ADAPTER_DIR) if (run_dir / name).exists()]
    for name in removed:
        remove(run_dir / name)
    if removed:
        again = "the run writes them again when it finishes, or" if rewritten else "rewrite them with"
        log.info(
            "removed %s of an earlier round from %s before training further rounds; %s `scaleot export %s`",
            " and ".join(f"{name}/" for name in removed),
            run_dir,
            again,
            run_dir,
        )
    return removed


def recorded_bundle(run_dir: Path) -> dict[str, str]:
    """What a run recorded about its models (metrics.json's ``bundle``): the emulator bundle's ``path`` and
    ``sha256``, and the full model's content hash ``model_sha256``.

    Raises:
        ValueError: metrics.json is missing or unreadable.
    """
    from simulations.server.outputs import read_metrics

    return dict(read_metrics(run_dir, required=True).get("bundle", {}))


def load_run_full_model(run_dir: Path, model: str, device: str = "cpu") -> tuple[Any, Any]:
    """The run's full model and tokenizer, loaded by its saved name or path and checked against the content
    hash the run recorded: whatever sits at that name or path now may be another model.

    Raises:
        ValueError: the model loaded has another content hash than the run's (one line naming both).
    """
    from emulator.lm.models import load_model, model_fingerprint

    recorded = recorded_bundle(run_dir).get("model_sha256")
    full, tokenizer = load_model(model, device=device)
    if not recorded:
        log.warning("%s recorded no model hash; model=%r is not checked against it", run_dir, model)
    elif (actual := model_fingerprint(full)) != recorded:
        raise ValueError(
            f"model={model!r} now has content sha256 {actual[:12]}…, but the run in {run_dir} trained on "
            f"{recorded[:12]}…: the model at that name or path changed since; put the run's model back there"
        )
    return full, tokenizer


def export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``scaleot export``."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    parser.add_argument(
        "--out", type=Path, help="where to write (default: RUN_DIR); not a directory holding another run"
    )


def run_export(args: argparse.Namespace) -> None:
    """``scaleot export``: print the directories written."""
    for kind, path in export_run(args.run_dir, args.out).items():
        print(f"{kind}: {path}")
