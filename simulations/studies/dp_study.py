"""DP study (a benchmark, not a test): plug-in accuracy against the noise multiplier, with the ε it spends.

Runs one run config (default: the demo, ``configs/smollm2-arc-easy.toml``) once without DP and once per noise
multiplier ``z`` with ``[privacy]`` on (Flower's server-side fixed clipping at ``--clipping-norm``; see
``strategies.privacy``), all in this process, so the full model's zero-shot is scored once. Prints, per run,
ε at δ after the last round (RDP, no sampling amplification claimed), the noise std per adapter coordinate,
plug-in and emulator fine-tuned accuracy and plug-in minus full zero-shot (paired, same test examples).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.dp_study --noise 0 0.5 1.2 \\
        --set client.local_steps=10 --set evaluation.test_limit=200
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simulations.run_config import add_set_option

log = logging.getLogger("scaleot.dp_study")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="simulations/configs/smollm2-arc-easy.toml")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.2], help="noise multipliers")
    parser.add_argument("--clipping-norm", type=float, default=0.01, help="C (L2, whole adapter update)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without DP")
    add_set_option(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/dp-study"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    from simulations.runner import quiet_environment

    quiet_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from simulations.run_config import load_config
    from simulations.runner import simulate
    from simulations.server.outputs import read_metrics

    runs: dict[str, Any] = {}
    settings = ([] if args.no_baseline else [("no DP", [])]) + [
        (
            f"z={z:g}",
            [
                "privacy.clipping='fixed'",
                f"privacy.noise_multiplier={z}",
                f"privacy.clipping_norm={args.clipping_norm}",
            ],
        )
        for z in args.noise
    ]
    for label, privacy in settings:
        config = load_config(args.config, [*args.overrides, *privacy])
        run_dir = args.out / label.replace("=", "").replace(" ", "-")
        recorded = read_metrics(run_dir)
        done = recorded.get("status") == "finished"
        resume = run_dir if (run_dir / "config.json").is_file() else None  # a run stopped earlier continues
        runs[label] = recorded if done else simulate(config, run_dir, resume=resume)
        log.info("%s done", label)
    table = markdown(runs, args.clipping_norm)
    (args.out / "dp.md").write_text(table)
    print(table)


def markdown(runs: Mapping[str, Mapping[str, Any]], clipping_norm: float) -> str:
    """One line per run: z, ε, noise std, plug-in, emulator FT, plug-in − full ZS (paired)."""
    from emulator.results import EMULATOR_FT, FULL_ZS, PLUG_IN, paired_difference
    from simulations.server.outputs import pct

    lines = [
        f"Fixed clipping C = {clipping_norm:g}; ε at δ after the last round (RDP, no amplification).",
        "",
        "| run | ε | noise std / coord | plug-in | emulator FT | full ZS | plug-in − full ZS (paired) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, metrics in runs.items():
        results, last = metrics["results"], metrics["rounds"][-1]
        plug_in, full, emulator_ft = results[PLUG_IN], results[FULL_ZS], results[EMULATOR_FT]
        epsilon = last.get("privacy", {}).get("epsilon")
        mean, stderr = paired_difference(tuple(plug_in["correct"]), tuple(full["correct"]))
        noise = last.get("privacy", {}).get("noise_std")
        spent = "–" if not last.get("privacy") else ("∞" if epsilon is None else f"{epsilon:.2f}")
        lines.append(
            f"| {label} | {spent} "
            f"| {'–' if noise is None else f'{noise:.2g}'} | {pct(plug_in['acc'], plug_in['acc_stderr'])} "
            f"| {pct(emulator_ft['acc'], emulator_ft['acc_stderr'])} "
            f"| {pct(full['acc'], full['acc_stderr'])} | {100 * mean:+.1f} ± {100 * stderr:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
