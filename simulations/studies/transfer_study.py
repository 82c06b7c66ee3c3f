"""Transfer study: do adapters trained on an emulator transfer to the full model? (a benchmark, not a test)

Centralised offsite-tuning with one data owner and no Flower, so emulator choices can be compared quickly and
on the same examples: for each emulator setting, build it, fine-tune the adapter on it for a fixed budget, and
score emulator zero-shot, emulator fine-tuned and plug-in. ``full`` (method=full) is the fine-tuning upper
bound; every row carries its paired difference to it (same test examples), so a gain can be told from noise.

    python -m simulations.studies.transfer_study --setting method=full \
        --setting method=uniform,alpha=0.25,rank_keep=1.0 --setting method=scaleot,alpha=0.25

Results are appended to ``--out`` (JSON lines) as each setting finishes, and a markdown table is printed.
Rerunning with the same ``--out`` skips the settings already there (resumable). Emulators come from the
shared bundle cache (``simulations.server.bundle_cache``): a stage 1 paid here is reused by
``scaleot compare``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emulator.config import AdapterConfig, EmulatorConfig, corpus_exclusion
from emulator.config_parse import parse_assignment, parse_typed
from emulator.data.encoding import training_batches
from emulator.data.tasks import load_task
from emulator.evaluation.scoring import multiple_choice_accuracy
from emulator.files import read_json, read_jsonl, write_text
from emulator.lm.models import check_model_name, load_model, model_fingerprint
from emulator.methods import method_spec
from emulator.results import EMULATOR_FT, EMULATOR_ZS, PLUG_IN, MCResult, paired_difference, privacy_gap
from emulator.scaleot.bundle import load_emulator
from emulator.tuning.adapters import prepare_adapter_
from emulator.tuning.plug_in import plug_in_
from emulator.tuning.training import train_adapter
from simulations.arguments import (
    EXIT_USAGE,
    error_line,
    non_negative_int,
    output_file,
    positive_int,
    unloadable_model,
)
from simulations.server.bundle_cache import ensure_bundle

log = logging.getLogger(__name__)


def parse_setting(text: str) -> dict[str, Any]:
    """``method=scaleot,alpha=0.25`` -> a dict with TOML-typed values (a bare word is a string).

    Raises:
        ValueError: an item that is not ``key=value``.
    """
    example = "key=value,key=value, e.g. method=scaleot,alpha=0.25"
    return dict(parse_assignment(item, "--setting", example) for item in filter(None, text.split(",")))


def setting_configs(args: argparse.Namespace, text: str) -> tuple[EmulatorConfig, AdapterConfig, float]:
    """The emulator, adapter and learning rate of one ``--setting`` (``method=scaleot,alpha=0.25``).

    Raises:
        ValueError: a malformed setting, or a key or value the emulator or adapter config refuses; one line.
    """
    setting = parse_setting(text)
    adapter = AdapterConfig(mode=setting.pop("adapter_mode", args.adapter_mode))
    lr = parse_typed(setting.pop("lr", args.lr), float, "--setting lr")
    if not method_spec(setting.get("method", EmulatorConfig.method)).compresses:
        return EmulatorConfig.full(), adapter, lr
    # stage 1 must never see the evaluated task (see emulator.data.wikipedia)
    return EmulatorConfig.from_dict({"corpus_exclude": corpus_exclusion(args.task), **setting}), adapter, lr


def run_setting(
    args: argparse.Namespace, configs: tuple[EmulatorConfig, AdapterConfig, float], task: Any
) -> dict[str, Any]:
    """Build, fine-tune and score one emulator setting (``setting_configs``); returns a JSON-able row."""
    emu_config, adapter, lr = configs
    model, tokenizer = load_model(args.model, device=args.device)
    emulator, _ = load_emulator(ensure_bundle(args.model, emu_config, model, tokenizer), device=args.device)
    score = lambda m: multiple_choice_accuracy(m, tokenizer, task.test, batch_size=args.eval_batch)  # noqa: E731
    emu_zs = score(emulator.model) if emu_config.traits.compresses and not args.skip_emulator_zs else None
    positions = emulator.adapter_positions()
    prepare_adapter_(emulator.model, positions, adapter)
    batches = training_batches(
        tokenizer, task.train, args.batch_size, args.max_length, seed=args.seed, epochs=args.epochs
    )
    batches = tqdm(batches, desc="adapter training", unit="step", disable=None)  # a bar on a terminal only
    trained = train_adapter(emulator.model, positions, batches, lr=lr, seed=args.seed)
    emu_ft = score(emulator.model)
    plug_in_(model, trained.state, sorted(positions), adapter)
    plug = score(model)
    return {
        "setting": _label(emu_config, adapter, lr),
        "emulator_params": emulator.num_parameters,
        "full_params": emulator.full_num_parameters,
        "build_s": emulator.build_seconds,
        "train_s": trained.seconds,
        "step_s": trained.seconds / trained.steps,
        "train_loss": trained.mean_loss,
        EMULATOR_ZS: _as_row(emu_zs),
        EMULATOR_FT: _as_row(emu_ft),
        PLUG_IN: _as_row(plug),
    }


def _label(config: EmulatorConfig, adapter: AdapterConfig, lr: float) -> str:
    if not config.traits.compresses:
        return f"{config.method} ({adapter.mode}, lr {lr:g})"
    extra = (
        f", {config.stage1.harmonizer_loss}/{config.stage1.local_norm}, {config.stage1.stage1_steps} st"
        if config.traits.harmonizers
        else ""
    ) + (", shared" if config.share_replaced else "")
    return f"{config.method} α={config.alpha} β={config.src.rank_keep}{extra} ({adapter.mode}, lr {lr:g})"


def _uncompressed(method: str) -> bool:
    return not method_spec(method).compresses


def _as_row(result: MCResult | None) -> dict[str, Any] | None:
    return None if result is None else result.to_row()


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [_upgraded(row) for row in read_jsonl(path)]


def _upgraded(row: dict[str, Any]) -> dict[str, Any]:
    # Rows written before the results rows had one name each called the emulator's "emu_zs" and "emu_ft".
    old = {"emu_zs": EMULATOR_ZS, "emu_ft": EMULATOR_FT}
    return {old.get(k, k): v for k, v in row.items()}


def table(rows: list[dict[str, Any]], full_zs: dict[str, Any]) -> str:
    """Markdown table in %; Δ = plug-in − emulator FT; 'vs full' is the paired plug-in difference to full."""
    # A row's setting label starts with its method (_label).
    reference = next((r for r in rows if _uncompressed(r["setting"].split(" ", 1)[0])), None)
    lines = [
        f"Full zero-shot: acc {100 * full_zs['acc']:.1f} ± {100 * full_zs['acc_stderr']:.1f}, "
        f"acc_norm {100 * full_zs['acc_norm']:.1f} (n = {len(full_zs['correct'])})",
        "",
        "| setting | params | emu ZS | emu FT | plug-in | plug-in norm | Δ | vs full (paired) | step s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        zs = "–" if r[EMULATOR_ZS] is None else f"{100 * r[EMULATOR_ZS]['acc']:.1f}"
        plug, ft = r[PLUG_IN], r[EMULATOR_FT]
        gap = 100 * privacy_gap(plug, ft)
        if reference is not None and r is not reference:
            d, se = paired_difference(tuple(plug["correct"]), tuple(reference[PLUG_IN]["correct"]))
            vs = f"{100 * d:+.1f} ± {100 * se:.1f}"
        else:
            vs = "–"
        lines.append(
            f"| {r['setting']} | {r['emulator_params'] / r['full_params']:.2f} | {zs} | "
            f"{100 * ft['acc']:.1f} | {100 * plug['acc']:.1f} ± {100 * plug['acc_stderr']:.1f} | "
            f"{100 * plug['acc_norm']:.1f} | {gap:+.1f} | {vs} | {r['step_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--setting", action="append", default=[], help="comma-separated EmulatorConfig keys")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--adapter-mode", default="full", choices=["full", "lora"])
    parser.add_argument("--max-length", type=positive_int, default=256)
    parser.add_argument("--eval-batch", type=positive_int, default=32)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--test-size", type=positive_int, default=None, help="test examples (default: min(500, n/4))"
    )
    parser.add_argument("--skip-emulator-zs", action="store_true", help="do not score emulator zero-shot")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=output_file, default=Path("runs/transfer_study.jsonl"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:  # bad input is one line, before any model loads (a bad --setting used to end the study midway)
        check_model_name(args.model)
        planned = {text: setting_configs(args, text) for text in args.setting}
        task = load_task(args.task, seed=args.seed, test_size=args.test_size)  # unknown task, missing data
    except ValueError as error:
        error_line(error)
        return EXIT_USAGE
    args.out.parent.mkdir(parents=True, exist_ok=True)
    zs_path = args.out.with_suffix(".full_zs.json")
    try:
        model, tokenizer = load_model(args.model, device=args.device)
    except (ValueError, OSError) as error:  # an empty or broken model directory: transformers' traceback
        error_line(unloadable_model(args.model, error))
        return EXIT_USAGE
    # Reused only for the same model content, task and seed; anything else is scored again.
    key = {"model": model_fingerprint(model), "task": args.task, "seed": args.seed}
    saved = read_json(zs_path) if zs_path.exists() else {}
    if saved.get("key") != key:
        saved = {"key": key, "result": _as_row(multiple_choice_accuracy(model, tokenizer, task.test))}
        write_text(zs_path, json.dumps(saved))
    full_zs = saved["result"]
    del model
    done = {row.get("spec") for row in _read_rows(args.out)}
    for text in args.setting:
        if text in done:
            log.info("%s: already in %s, skipped", text, args.out)
            continue
        start = time.perf_counter()
        row = run_setting(args, planned[text], task)
        row["wall_s"], row["spec"] = time.perf_counter() - start, text
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("%s done in %.0f s: plug-in %.3f", row["setting"], row["wall_s"], row[PLUG_IN]["acc"])
    rows = _read_rows(args.out)
    print(table(rows, full_zs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
