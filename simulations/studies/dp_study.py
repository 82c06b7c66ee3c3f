"""DP study (a benchmark, not a test): plug-in accuracy against the noise multiplier, with the ε it spends.

Runs one run config (default: the demo, ``configs/smollm2-arc-easy.toml``) once without DP and once per noise
multiplier ``z`` with ``[privacy]`` on (Flower's server-side fixed clipping at ``--clipping-norm``; see
``strategies.privacy``), all in this process, so the full model's zero-shot is scored once. Prints, per run,
ε at δ (``privacy.delta``, 1e-5 by default; the heading gives it) after the last round (RDP, no sampling
amplification claimed), the noise std per adapter coordinate, plug-in and emulator fine-tuned accuracy and
plug-in minus full zero-shot (paired, same test examples).

Each run lives in ``<out>/<run>`` (``no-DP``, ``z0.5``, ...) and is handled as ``scaleot compare`` handles a
method (``simulations.studies.compare.run_method``): a finished run of the same config is reused, an
interrupted one resumed, a failed one started over. A directory holding a run of another config (another
``--set``, ``--clipping-norm`` or config file) is refused in one line, before any run trains: its numbers
would be tabulated under this config's settings. Every planned config is built first, so a bad ``--noise``
or ``--set`` is refused before anything runs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.dp_study --noise 0 0.5 1.2 \\
        --set client.local_steps=10 --set evaluation.test_limit=200
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emulator.files import check_out_dir
from simulations.arguments import EXIT_USAGE, error_line, existing_file
from simulations.run_config import RunConfig, add_set_option, load_config

log = logging.getLogger("scaleot.dp_study")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=existing_file, default="simulations/configs/smollm2-arc-easy.toml")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.2], help="noise multipliers")
    parser.add_argument("--clipping-norm", type=float, default=0.01, help="C (L2, whole adapter update)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without DP")
    add_set_option(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/dp-study"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from simulations.runner import quiet_environment

    quiet_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from simulations.studies.compare import _check_same_experiment, run_method

    remedy = "remove it or give dp_study another --out"
    try:  # bad input is one line, before any run trains (a bad --noise used to end a study hours in)
        planned = planned_runs(args)
        check_out_dir(args.out, "--out", "give a directory: absent, or one dp_study wrote (to continue it)")
        for config, run_dir in planned.values():
            if (run_dir / "config.json").is_file():
                _check_same_experiment(config, run_dir, remedy)
    except ValueError as error:
        error_line(error)
        return EXIT_USAGE
    runs: dict[str, Any] = {}
    for label, (config, run_dir) in planned.items():
        try:
            runs[label], how = run_method(config, run_dir, remedy)
        except ValueError as error:  # a finished run of the same config but of other model weights
            error_line(error)
            return EXIT_USAGE
        log.info("%s %s", label, how)
    table = markdown(runs, args.clipping_norm)
    (args.out / "dp.md").write_text(table)
    print(table)
    return 0


def planned_runs(args: argparse.Namespace) -> dict[str, tuple[RunConfig, Path]]:
    """Run label -> (config, run directory) of every run of the study, in table order.

    Raises:
        ValueError: an unreadable config file, a bad ``--set``, or a ``--noise`` / ``--clipping-norm`` value
            the privacy config refuses; one line.
    """
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
    return {
        label: (load_config(args.config, [*args.overrides, *privacy]), args.out / _slug(label))
        for label, privacy in settings
    }


def _slug(label: str) -> str:
    return label.replace("=", "").replace(" ", "-")


def markdown(runs: Mapping[str, Mapping[str, Any]], clipping_norm: float) -> str:
    """One line per run: z, ε, noise std, plug-in, emulator FT, plug-in − full ZS (paired)."""
    from emulator.results import EMULATOR_FT, FULL_ZS, PLUG_IN, paired_difference
    from simulations.server.outputs import pct

    deltas = sorted(
        {m["rounds"][-1]["privacy"]["delta"] for m in runs.values() if m["rounds"][-1].get("privacy")}
    )
    at = f"δ = {', '.join(f'{d:g}' for d in deltas)}" if deltas else "δ"  # the config's privacy.delta
    lines = [
        f"Fixed clipping C = {clipping_norm:g}; ε at {at} after the last round (RDP, no amplification).",
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
    raise SystemExit(main())
