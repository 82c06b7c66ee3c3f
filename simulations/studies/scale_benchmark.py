"""Scale benchmark (a script, not a test): memory and round time of a run with many simulated data owners.

For each number of clients N (default 100, 300, 1,000) the run config (default ``configs/scale.toml``) is run
with ``federation.num_clients = N`` and the same number sampled per round, in a fresh child process, so the
server process is measured alone. After every round (when the strategy logs its progress line) the child
records the resident set size (RSS) of its own process, where the ServerApp runs (strategy, full model,
server-side evaluation), and of every Ray ``ClientAppActor`` process (each holds one emulator copy). The
parent prints, per N, the table of rounds, then a summary: median round time (round 1 excluded: it holds the
emulator handshake with every node), the variation of RSS over rounds 3 to the last ((max - min) / min; the
target is < 10 % at 1,000 clients) and the least-squares slope of round time against N.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.scale_benchmark                  # ~15 min
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.scale_benchmark --clients 100 \\
        --set federation.rounds=3                                                             # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emulator.files import check_out_dir, read_json
from simulations.arguments import EXIT_USAGE, error_line, existing_file, non_negative_int, positive_int
from simulations.run_config import add_set_option, load_config

log = logging.getLogger("scaleot.scale_benchmark")

_ROUND_LINE = re.compile(r"^round (\d+)/(\d+):")
_MB = 1e6


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=existing_file, default="simulations/configs/scale.toml")
    parser.add_argument("--clients", type=positive_int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--sampled", type=positive_int, default=10, help="clients sampled per round")
    parser.add_argument(
        "--short-rounds",
        type=non_negative_int,
        default=10,
        help="rounds of every N but the largest (which runs the config's rounds); 0: the config's",
    )
    parser.add_argument(
        "--cpus-per-actor",
        type=float,
        nargs="+",
        help="instead of varying N: run N = the first --clients once per simulation.client_num_cpus value "
        "(e.g. 0 1: one actor with every core against one actor per core)",
    )
    add_set_option(parser)
    parser.add_argument("--out", type=Path, help="keep the runs and the JSON here (default: a temp dir)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run one N, write JSON
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.child is not None:
        _run_child(args)
        return 0
    runs = _runs(args)
    try:  # every child's config is built here first: a bad one was a child's traceback, then the parent's
        for _, overrides in runs:
            load_config(args.config, [*overrides, *args.overrides])
        if args.out is not None:
            check_out_dir(args.out, "--out", "give a directory that can be written")
    except ValueError as error:
        error_line(error)
        return EXIT_USAGE
    out = args.out or Path(tempfile.mkdtemp(prefix="scaleot-scale-"))
    results, finished = {}, False
    try:
        for label, overrides in runs:
            sets = [x for o in [*overrides, *args.overrides] for x in ("--set", o)]
            child = [sys.executable, "-m", "simulations.studies.scale_benchmark", "--config", args.config]
            log.info("%s: %s", label, " ".join(overrides + args.overrides))
            run_dir = out / label.replace(" ", "-").replace("/", "-per-")
            done = subprocess.run([*child, *sets, "--child", str(run_dir)], check=False)
            if done.returncode != 0:
                error_line(f"the run of {label} failed (exit status {done.returncode}); its log is above")
                return 1
            results[label] = read_json(run_dir / "scale.json")
        finished = True
    finally:
        if args.out is None and not finished:
            # A temp dir of a study that did not finish holds nothing the user was told of: not left behind.
            shutil.rmtree(out, ignore_errors=True)
    (out / "scale.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    log.info("runs and JSON in %s", out)
    return 0


def _runs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(label, overrides) of each child run: one per N, or one per CPU share of an actor."""

    def clients(n: int) -> list[str]:
        sampled = min(args.sampled, n)
        return [
            f"federation.num_clients={n}",
            f"federation.fraction={sampled / n}",
            f"federation.min_clients={sampled}",
        ]

    if args.cpus_per_actor:
        n = args.clients[0]
        return [
            (f"{c:g} CPU/actor", [*clients(n), f"simulation.client_num_cpus={c:g}"])
            for c in args.cpus_per_actor
        ]
    runs = []
    for n in args.clients:
        short = (
            [f"federation.rounds={args.short_rounds}"] if n != max(args.clients) and args.short_rounds else []
        )
        runs.append((f"{n} clients", clients(n) + short))
    return runs


# --- child: one run, sampled after every round --------------------------------------------------------------


class _RoundSampler(logging.Handler):
    """Samples RSS when the strategy logs ``round k/K: ...`` (the end of round k, after its evaluation)."""

    def __init__(self, path: Path) -> None:
        super().__init__(level=logging.INFO)
        self.rows: list[dict[str, Any]] = []
        self.path = path  # rewritten every round, so a run stopped early still leaves its samples

    def emit(self, record: logging.LogRecord) -> None:
        match = _ROUND_LINE.match(record.getMessage())
        if match:
            server, actors = rss_snapshot()
            self.rows.append({"round": int(match.group(1)), "server_rss": server, "actor_rss": actors})
            self.path.write_text(json.dumps(self.rows))


def rss_snapshot() -> tuple[int, dict[int, int]]:
    """RSS in bytes of this process and of each of its Ray ClientApp actors (by pid).

    The actors are found among this process's descendants (the Ray instance ``run_simulation`` starts), so
    other simulations on the machine are not counted.
    """
    import psutil

    me = psutil.Process()
    actors = {}
    for proc in me.children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::ClientAppActor"):
                actors[proc.pid] = int(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return int(me.memory_info().rss), actors


def _run_child(args: argparse.Namespace) -> None:
    from simulations.runner import simulate

    config = load_config(args.config, args.overrides)
    args.child.mkdir(parents=True, exist_ok=True)
    sampler = _RoundSampler(args.child / "rss.json")
    logging.getLogger("strategies.offsite").addHandler(sampler)
    metrics = simulate(config, args.child, overwrite=True)  # each child measures afresh
    timing = {r["round"]: {k: r[k] for k in ("seconds", "eval_seconds")} for r in metrics["rounds"]}
    rows = [row | timing[row["round"]] for row in sampler.rows]
    result = {
        "num_clients": config.federation.num_clients,
        "client_num_cpus": config.simulation.client_num_cpus,
        "rows": rows,
    }
    (args.child / "scale.json").write_text(json.dumps(result, indent=2))


# --- report ------------------------------------------------------------------------------------------------


def variation(values: Sequence[float]) -> float:
    """(max - min) / min, in percent."""
    return 100 * (max(values) - min(values)) / min(values)


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line ``y = a + b·x``; returns (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def report(results: dict[str, dict[str, Any]]) -> str:
    """Markdown tables: rounds per run, then the summary and the slope of round time against N."""
    lines = []
    for label, result in results.items():
        header = "| round | wall s | of which eval s | server RSS MB | actor RSS MB |"
        lines += [f"\n### {label}\n", header, "|---:|---:|---:|---:|---|"]
        for row in result["rows"]:
            actors = ", ".join(f"{v / _MB:.0f}" for v in row["actor_rss"].values())
            lines.append(
                f"| {row['round']} | {row['seconds']:.1f} | {row['eval_seconds']:.1f} | "
                f"{row['server_rss'] / _MB:.0f} | {actors} |"
            )
    lines += [
        "\n### Summary (RSS variation over rounds 3..last: (max - min) / min)\n",
        "| run | clients | rounds | round 1 s | median round s (2..last) | median training s (2..last) | "
        "server RSS MB (r3 → last) | server var % | actors | actor RSS MB (r3 → last) | actor var % |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    medians: dict[int, float] = {}
    for label, result in results.items():
        rows = result["rows"]
        later = [r for r in rows if r["round"] >= 3]
        train = [r["seconds"] - r["eval_seconds"] for r in rows if r["round"] >= 2]
        medians[result["num_clients"]] = statistics.median(train)
        server = [r["server_rss"] for r in later]
        actor_sum = [sum(r["actor_rss"].values()) for r in later]
        lines.append(
            f"| {label} | {result['num_clients']} | {len(rows)} | {rows[0]['seconds']:.1f} | "
            f"{statistics.median(r['seconds'] for r in rows if r['round'] >= 2):.1f} | "
            f"{statistics.median(train):.2f} | "
            f"{server[0] / _MB:.0f} → {server[-1] / _MB:.0f} | {variation(server):.1f} | "
            f"{len(later[-1]['actor_rss'])} | {actor_sum[0] / _MB:.0f} → {actor_sum[-1] / _MB:.0f} | "
            f"{variation(actor_sum):.1f} |"
        )
    if len(medians) >= 2:
        a, b = slope(list(medians), list(medians.values()))
        lines.append(
            f"\nRound time without evaluation ≈ {a:.2f} s + {1000 * b:.3f} s per 1,000 clients known "
            f"(least squares over N = {', '.join(map(str, medians))})."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
