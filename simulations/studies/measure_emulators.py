"""Measure emulators: perplexity on held-out public text and zero-shot accuracy, per method and alpha.

Takes each emulator from the bundle cache that simulations share (building it there when absent), scores it,
frees it, and prints one markdown table (plus the full model's own row). Not a test: a rerunnable measurement.
The defaults measure the emulators of ``simulations/configs/compare-smollm2.toml``, so after a compare only
the scoring runs:

    .venv/bin/python -m simulations.studies.measure_emulators --model smollm2-135m --alphas 0.25 0.5 \\
        --methods scaleot uniform uniform+distill --test-limit 500

``--losses`` takes stage-1 variants for ``scaleot`` as ``loss[/norm]`` (``local``, ``local/token``, ``lm``,
``lm+local``); ``--set FIELD=VALUE`` sets any other ``EmulatorConfig`` field for every emulator.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emulator.config import EmulatorConfig, corpus_exclusion
from emulator.config_parse import parse_assignment
from emulator.data.corpus import corpus_blocks, public_corpus
from emulator.data.tasks import check_task_name, load_task
from emulator.evaluation.scoring import multiple_choice_accuracy, perplexity
from emulator.lm.models import check_model_name, load_model
from emulator.lm.surgery import count_parameters
from emulator.methods import method_spec
from emulator.results import MCResult
from emulator.scaleot.bundle import load_emulator
from simulations.arguments import (
    EXIT_USAGE,
    error_line,
    non_negative_int,
    output_file,
    positive_int,
    unloadable_model,
)
from simulations.cli import SET_EXAMPLE
from simulations.run_config import add_set_option
from simulations.server.bundle_cache import ensure_bundle

log = logging.getLogger("scaleot.measure")


@dataclass
class Row:
    """One measured model."""

    method: str
    alpha: float | None
    loss: str
    build_seconds: float
    num_parameters: int
    full_num_parameters: int
    ppl: float
    accuracy: MCResult | None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--methods", nargs="+", default=["scaleot", "uniform", "uniform+distill"])
    parser.add_argument(
        "--losses", nargs="+", default=["local"], help="scaleot stage-1 variants: loss[/norm]"
    )
    parser.add_argument("--rank-keep", type=float, default=1.0, help="β of scaleot (baselines: no SRC)")
    parser.add_argument("--steps", type=positive_int, default=60, help="stage-1 steps of scaleot")
    parser.add_argument("--policy-interval", type=int, default=4, help="harmonizer steps per policy step")
    parser.add_argument("--distill-steps", type=int, default=60, help="distillation steps of uniform+distill")
    add_set_option(parser, "any EmulatorConfig field (TOML value)", dest="set", metavar="FIELD=VALUE")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument(
        "--test-limit", type=non_negative_int, default=500, help="first N test examples (0: no accuracy)"
    )
    parser.add_argument("--ppl-seq-len", type=positive_int, default=256, help="tokens per perplexity block")
    parser.add_argument("--json", type=output_file, help="also write the rows (and curves) to this file")
    parser.add_argument("--skip-full", action="store_true", help="do not measure the full model itself")
    parser.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)"
    )
    return parser.parse_args(argv)


def measure(
    model: torch.nn.Module, tokenizer, blocks: torch.Tensor, examples: list
) -> tuple[float, MCResult | None]:
    """Perplexity on ``blocks`` and zero-shot accuracy on ``examples`` (None when there are none)."""
    ppl = perplexity(model, blocks, batch_size=8)
    accuracy = multiple_choice_accuracy(model, tokenizer, examples, batch_size=16) if examples else None
    return ppl, accuracy


def emulator_configs(args: argparse.Namespace) -> list[tuple[str, EmulatorConfig]]:
    """(loss label, config) for every emulator to build, in table order.

    Raises:
        ValueError: a malformed ``--set``, an unknown method, or settings (``--alphas``, ``--losses``, a
            ``--set`` field) that make an invalid emulator config; one line.
    """
    extra = dict(parse_assignment(item, "--set", SET_EXAMPLE) for item in args.set)
    # As in a run of the task: stage 1 never sees it, and the bundles are the ones `scaleot compare` builds.
    exclude = corpus_exclusion(args.task)
    configs = []
    for alpha in args.alphas:
        for method in args.methods:
            # The baselines as `scaleot compare` runs them (no SRC); --rank-keep is ScaleOT's β.
            traits = method_spec(method)
            base = {"corpus_exclude": exclude, **extra, **traits.preset, "alpha": alpha}
            if traits.harmonizers:  # the stage-1 loss variants
                for variant in args.losses:
                    loss, _, norm = variant.partition("/")
                    values = {
                        **base,
                        "rank_keep": args.rank_keep,
                        "stage1_steps": args.steps,
                        "policy_interval": args.policy_interval,
                        "harmonizer_loss": loss,
                    }
                    configs.append(
                        (
                            variant,
                            EmulatorConfig.from_dict({**values, **({"local_norm": norm} if norm else {})}),
                        )
                    )
            elif traits.distills:
                configs.append(
                    ("kd", EmulatorConfig.from_dict({**base, "distill_steps": args.distill_steps}))
                )
            else:
                configs.append(("–", EmulatorConfig.from_dict(base)))
    return configs


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| method | α | stage-1 loss | build s | params emu / full | ppl (corpus val) | acc | acc_norm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{r.accuracy.acc:.3f} ± {r.accuracy.acc_stderr:.3f}" if r.accuracy else "–"
        norm = f"{r.accuracy.acc_norm:.3f} ± {r.accuracy.acc_norm_stderr:.3f}" if r.accuracy else "–"
        alpha = "–" if r.alpha is None else f"{r.alpha:g}"
        share = f"{r.num_parameters / 1e6:.1f}M / {r.full_num_parameters / 1e6:.1f}M"
        cells = [r.method, alpha, r.loss, f"{r.build_seconds:.0f}", share, f"{r.ppl:,.1f}", acc, norm]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:  # bad input is one line, before anything slow (an unknown --task was found after the model loaded)
        check_model_name(args.model)
        check_task_name(args.task)
        configs = emulator_configs(args)
    except ValueError as error:
        error_line(error)
        return EXIT_USAGE
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # on a busy machine one thread is much faster than contended two
    try:
        model, tokenizer = load_model(args.model)
    except (ValueError, OSError) as error:  # an empty or broken model directory: transformers' traceback
        error_line(unloadable_model(args.model, error))
        return EXIT_USAGE
    data = configs[0][1].data
    text = public_corpus("validation", data.corpus, exclude=data.corpus_exclude)
    blocks = corpus_blocks(tokenizer, text, args.ppl_seq_len)
    examples = load_task(args.task).test[: args.test_limit] if args.test_limit > 0 else []
    log.info("perplexity on %d x %d tokens; accuracy on %d examples", *blocks.shape, len(examples))
    rows, curves = [], {}
    full_params = count_parameters(model)
    if not args.skip_full:
        rows.append(
            Row(
                "full model",
                None,
                "–",
                0.0,
                full_params,
                full_params,
                *measure(model, tokenizer, blocks, examples),
            )
        )
        log.info("\n%s", table(rows))
    for loss, config in configs:
        emulator, _ = load_emulator(ensure_bundle(args.model, config, model, tokenizer))
        ppl, accuracy = measure(emulator.model, tokenizer, blocks, examples)
        rows.append(
            Row(
                config.method,
                config.alpha,
                loss,
                emulator.build_seconds,
                emulator.num_parameters,
                full_params,
                ppl,
                accuracy,
            )
        )
        curves[f"{config.method}-{config.alpha}-{loss}"] = {
            "loss": emulator.loss_curve,
            "reward": emulator.reward_curve,
            "scores": emulator.scores,
            "layer_map": [e.to_dict() for e in emulator.layer_map],
        }
        log.info("\n%s", table(rows))
        del emulator
        gc.collect()
    print(table(rows))
    if args.json:
        payload = {
            "args": vars(args) | {"json": str(args.json)},
            "rows": [_row_dict(r) for r in rows],
            "curves": curves,
            "time": time.time(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=1)
    return 0


def _row_dict(row: Row) -> dict:
    values = dict(vars(row))
    acc = row.accuracy
    values["accuracy"] = None if acc is None else acc.to_row()
    return values


if __name__ == "__main__":
    raise SystemExit(main())
