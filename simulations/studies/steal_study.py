"""Model-stealing study (a benchmark, not a test): per emulator, how near the probe gets to the full model.

For each uniform and ScaleOT setting of a compare file (``[compare]``; the same emulator bundles as
``scaleot compare``, built with ``simulations.server.bundle_cache.ensure_bundle`` when missing), a data owner
holding the emulator runs ``emulator.evaluation.probe.steal_`` (every emulator parameter but the embedding,
fine-tuned on public text for a fixed budget), and the stolen model is scored zero-shot on the task's test
examples, next to the emulator's own zero-shot and the full model's. ``recovered`` = (stolen − emulator ZS) /
(full ZS − emulator ZS): the share of the compression's damage the attack undoes (1: the full model's
zero-shot is reached). ``stolen − full`` is paired on the same test examples.

Writes ``steal.json`` and ``steal.md`` into ``--out`` (default: where ``scaleot compare`` wrote the comparison
of the probed task and seed, and where its report then shows the stolen model's accuracy as a column:
``<output.dir>/<name>``, or its ``<task>-s<seed>`` cell for a file with ``compare.runs``). The file's ``task``
and ``seed`` pick the cell; ``--set task=piqa`` picks another.

Rerunning into the same ``--out`` adds to its ``steal.json``: a method probed again replaces its row, the
other methods' rows are kept. One file holds one probe (its settings and test examples head the table and the
report's column), so a rerun with other probe settings (``--steps``, ``--batch-size``, ``--seq-len``,
``--lr``, the config's corpus or seed) or another number of test examples (``--test-limit``) is refused in
one line before anything loads, naming the setting: remove ``steal.json`` or give another ``--out`` to probe
anew. Earlier rows used to be dropped without a word.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.steal_study \\
        --config simulations/configs/compare-smollm2.toml --test-limit 300
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.steal_study \\
        --config simulations/configs/compare-smollm2.toml --quick             # tiny llama, a minute
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emulator.data.tasks import load_task
from emulator.evaluation.probe import ProbeConfig, steal_
from emulator.evaluation.scoring import multiple_choice_accuracy
from emulator.files import check_out_dir, read_json
from emulator.lm.models import load_model
from emulator.methods import METHODS
from emulator.results import EMULATOR_ZS, FULL_ZS, MCResult, paired_difference
from emulator.scaleot.bundle import load_emulator
from simulations.arguments import (
    EXIT_USAGE,
    error_line,
    existing_file,
    non_negative_int,
    positive_int,
    unloadable_model,
)
from simulations.run_config import RunConfig, add_set_option
from simulations.server.bundle_cache import ensure_bundle
from simulations.server.outputs import pct, write_text
from simulations.studies.compare import CompareConfig, cell_dir, cells, load_compare, plan
from simulations.studies.compare_report import STEAL_FILE, stolen_rows
from simulations.studies.methods import Method

log = logging.getLogger("scaleot.steal_study")

KINDS = tuple(kind for kind, traits in METHODS.items() if traits.compresses)  # the emulators, no full


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        type=existing_file,
        default="simulations/configs/compare-smollm2.toml",
        help="compare config TOML whose [compare] settings are probed (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="merge the file's [quick] table first")
    add_set_option(parser)
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["uniform", "scaleot"],
        choices=KINDS,
        help="the emulator kinds to probe, each with a setting in the file (default: uniform scaleot)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=ProbeConfig.steps,
        help="probe steps, the budget (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=ProbeConfig.batch_size,
        help="probe blocks per step (default: %(default)s)",
    )
    parser.add_argument(
        "--seq-len",
        type=positive_int,
        default=ProbeConfig.seq_len,
        help="tokens per probe block (default: %(default)s)",
    )
    parser.add_argument(
        "--lr", type=float, default=ProbeConfig.lr, help="probe AdamW learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--test-limit",
        type=non_negative_int,
        default=0,
        help="score the first K test examples (default: 0, the config's evaluation.test_limit)",
    )
    parser.add_argument("--out", type=Path, help="default: <output.dir>/<name> of the compare file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from simulations.runner import quiet_environment

    quiet_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:  # bad input is one line, before the full model loads and is scored
        base, compare = load_compare(args.config, quick=args.quick, overrides=args.overrides)
        probe = ProbeConfig(
            args.steps, args.batch_size, args.seq_len, args.lr, base.emulator.data.corpus, base.seed
        )
        base, out = probed_cell(base, compare, args.config)
        probed = probed_methods(base, compare, args.kinds, args.config)
        test = load_task(base.task, seed=base.seed).test  # unknown task, missing task data
        out = args.out or out
        limit = args.test_limit or base.evaluation.test_limit
        test = test[:limit] if limit else test
        check_out_dir(out, "--out", "give a directory: absent, or one steal_study wrote (to add to it)")
        check_same_probe(out, probe, len(test))
    except ValueError as error:
        error_line(error)
        return EXIT_USAGE
    batch = base.evaluation.batch_size

    try:
        full_model, tokenizer = load_model(base.model)
    except (ValueError, OSError) as error:  # an empty or broken model directory: transformers' traceback
        error_line(unloadable_model(base.model, error))
        return EXIT_USAGE
    full = multiple_choice_accuracy(full_model, tokenizer, test, batch)
    log.info("full zero-shot %s on %d examples", pct(full.acc, full.acc_stderr), len(test))
    rows: list[dict[str, Any]] = []
    data = {"probe": vars(probe), "test_examples": len(test), "rows": rows}
    for method, config in probed:
        bundle = ensure_bundle(config.model, config.emulator, full_model, tokenizer)
        emulator, emulator_tokenizer = load_emulator(bundle)
        before = multiple_choice_accuracy(emulator.model, emulator_tokenizer, test, batch)
        result = steal_(emulator.model, emulator_tokenizer, probe)
        stolen = multiple_choice_accuracy(emulator.model, emulator_tokenizer, test, batch)
        rows.append(steal_row(method.label(base.emulator), full, before, stolen) | vars(result))
        log.info("%s: emulator ZS %.3f -> stolen %.3f", rows[-1]["method"], before.acc, stolen.acc)
        del emulator
        data = _write(out, args.config, probe, len(test), rows)  # after each method: a long study may stop
    print(markdown(data))
    return 0


def probed_cell(base: RunConfig, compare: CompareConfig, config: str) -> tuple[RunConfig, Path]:
    """The run config probed (``base``'s task and seed) and the directory of its comparison.

    A file without ``compare.runs`` is one comparison in ``<output.dir>/<name>``. With runs, the study probes
    the cell of ``base``'s task and seed, configured as ``scaleot compare`` ran it, and writes beside that
    cell's comparison, where ``compare --report`` reads it.

    Raises:
        ValueError: the file has runs and none is ``base``'s task and seed; the message lists the cells.
    """
    root = Path(base.output.dir) / base.name
    if not compare.runs:
        return base, root
    configs = cells(base, compare)
    for cell in configs:
        if (cell.task, cell.seed) == (base.task, base.seed):
            return cell, cell_dir(root, cell)
    listed = ", ".join(f"task={c.task} seed={c.seed}" for c in configs)
    raise ValueError(
        f"task={base.task} seed={base.seed}: not a cell of {config}'s compare.runs; pick one of {listed} "
        "with --set task=... --set seed=..."
    )


def probed_methods(
    base: RunConfig, compare: CompareConfig, kinds: Sequence[str], config: str
) -> list[tuple[Method, RunConfig]]:
    """The planned emulators of ``kinds``, in plan order.

    Raises:
        ValueError: a kind has no setting in the compare file (the study would score the full model, then
            print an empty table); the message lists the kinds the file has.
    """
    planned = [(method, run) for method, run in plan(base, compare) if method.kind in KINDS]
    have = list(dict.fromkeys(method.kind for method, _ in planned))
    missing = [kind for kind in kinds if kind not in have]
    if missing:
        raise ValueError(
            f"--kinds {' '.join(missing)}: {config} has no setting of {' or '.join(missing)}; "
            f"use one of {', '.join(have)} (or add a setting to its [compare] table)"
        )
    return [(method, run) for method, run in planned if method.kind in kinds]


def _write(out: Path, config: str, probe: ProbeConfig, n: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "config": config,
        "probe": vars(probe),
        "test_examples": n,
        "rows": _merged(out / STEAL_FILE, rows),
    }
    write_text(out / STEAL_FILE, json.dumps(data, indent=1))
    write_text(out / "steal.md", markdown(data))
    return data


def steal_row(label: str, full: MCResult, before: MCResult, stolen: MCResult) -> dict[str, Any]:
    """One method's result (accuracies as fractions); ``recovered``: None unless emulator < full."""
    gap = full.acc - before.acc
    mean, stderr = paired_difference(stolen.correct, full.correct)
    return {
        "method": label,
        FULL_ZS: full.measures(),
        EMULATOR_ZS: before.measures(),
        "stolen_zs": stolen.measures(),
        "stolen_minus_full": [mean, stderr],
        "recovered": (stolen.acc - before.acc) / gap if gap > 0 else None,
    }


def markdown(data: Mapping[str, Any]) -> str:
    """The study's table (accuracies in % ± standard error)."""
    probe = data["probe"]
    lines = [
        f"Model-stealing probe: {probe['steps']} AdamW steps × {probe['batch_size']} × {probe['seq_len']} "
        f"tokens of public text ({probe['corpus']}), lr {probe['lr']:g}, on every emulator parameter but the "
        f"embedding; {data['test_examples']} test examples.",
        "",
        "| method | full ZS | emulator ZS | stolen ZS | stolen − full (paired) | recovered | trained | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        recovered = "–" if r["recovered"] is None else f"{100 * r['recovered']:.0f} %"
        diff = r["stolen_minus_full"]
        lines.append(
            f"| {r['method']} | {_pct(r[FULL_ZS])} | {_pct(r[EMULATOR_ZS])} | {_pct(r['stolen_zs'])} | "
            f"{100 * diff[0]:+.1f} ± {100 * diff[1]:.1f} | {recovered} | "
            f"{r['trained_parameters'] / 1e6:.1f}M | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _merged(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Rows of other methods from an earlier run are kept; check_same_probe made sure it is of the same probe.
    if not path.is_file():
        return rows
    new = {r["method"] for r in rows}
    return [r for r in stolen_rows(read_json(path)) if r["method"] not in new] + rows


# The options (or config keys) that set each probe setting, to name in a refusal.
_PROBE_OPTIONS = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "seq_len": "--seq-len",
    "lr": "--lr",
    "corpus": "emulator.corpus",
    "seed": "seed",
    "test_examples": "--test-limit",
}


def check_same_probe(out: Path, probe: ProbeConfig, n: int) -> None:
    """Refuse to add rows of ``probe`` on ``n`` test examples to an ``out/steal.json`` of another probe: its
    rows would be dropped (they were, silently), or tabulated under the new probe's settings.

    Raises:
        ValueError: one line naming ``--out``, the first differing setting (its option) with both values, and
            what to do; also an unreadable ``steal.json``.
    """
    path = out / STEAL_FILE
    if not path.is_file():
        return
    old = read_json(path)
    if not isinstance(old, dict) or not isinstance(old.get("probe"), dict):
        raise ValueError(f"--out={out} holds a {STEAL_FILE} that steal_study did not write; remove it")
    saved = {**old["probe"], "test_examples": old.get("test_examples")}
    planned = {**vars(probe), "test_examples": n}
    changed = [key for key in planned if saved.get(key) != planned[key]]
    if changed:
        key = changed[0]
        option = _PROBE_OPTIONS.get(key, key)
        raise ValueError(
            f"--out={out} holds {STEAL_FILE} of another probe ({option}: {key}={saved.get(key)!r} there, "
            f"{planned[key]!r} planned); rerun with its settings to add methods to it, or remove "
            f"{path} or give another --out to probe anew"
        )


def _pct(row: Mapping[str, float]) -> str:
    return pct(row["acc"], row["acc_stderr"])


if __name__ == "__main__":
    raise SystemExit(main())
