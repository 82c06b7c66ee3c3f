"""Stage-1 cost against transfer (issue 21 §1; a benchmark, not a test): for every ScaleOT run of a compare
cell, what its stage 1 cost (wall and CPU seconds, read from the emulator bundle's manifest) beside what its
adapters transferred (plug-in, paired on the same test examples against a reference run).

The runs come from ``scaleot compare`` (one cell directory, e.g. ``runs/stage1-study/arc_easy-s0``), so every
setting is built and federated exactly as the evidence is; this script only reads them. The reference is the
live path with the most stage-1 steps unless ``--reference`` names a run directory. Stage-1 times are those
of the build recorded in the bundle (bundles built before the times were recorded show ``–``).

    scaleot compare --config simulations/configs/compare-evidence.toml --out runs/stage1-study \\
        --set 'compare.runs=[{task="arc_easy",seed=0}]' \\
        --set compare.importance_drop=[] --set compare.crash=[] \\
        --set 'compare.scaleot=[{alpha=0.25,rank_keep=1.0},{alpha=0.25,rank_keep=1.0,stage1_steps=1000}]'
    python -m simulations.studies.stage1_study runs/stage1-study/arc_easy-s0

Writes ``stage1.md`` and ``stage1.png`` (stage-1 CPU time against plug-in) into the cell directory.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emulator.files import read_json
from emulator.results import EMULATOR_FT, PLUG_IN, paired_difference
from simulations.arguments import EXIT_USAGE, error_line
from simulations.server.outputs import new_figure, read_metrics, save_figure, write_text

log = logging.getLogger("scaleot.stage1_study")

_EXAMPLE_CELL = "runs/stage1-study/arc_easy-s0"

_COLUMNS = "| run | steps | cached blocks | init | policy every | stage 1 s | stage 1 CPU s | CPU × ref | " \
    "emulator FT | plug-in | plug-in − ref (paired) |"  # fmt: skip


def stage1_rows(cell: Path, reference: str | None = None) -> list[dict[str, Any]]:
    """One row per finished ScaleOT run of ``cell`` (a compare cell directory), the reference first.

    Raises:
        ValueError: ``cell`` is not a directory, holds no finished ScaleOT run, or ``reference`` is not one
            of them.
    """
    if not cell.is_dir():
        raise ValueError(
            f"CELL={cell} is not a directory; give a compare cell directory, e.g. {_EXAMPLE_CELL}"
        )
    runs = {}
    for run in sorted(p for p in cell.iterdir() if p.is_dir()):
        metrics = read_metrics(run)
        emulator = metrics.get("config", {}).get("emulator", {})
        if metrics.get("status") == "finished" and emulator.get("method") == "scaleot":
            runs[run.name] = (metrics, emulator)
    if not runs:
        raise ValueError(f"{cell} holds no finished scaleot run; run scaleot compare on it first")
    if reference is None:
        live = [n for n, (_, e) in runs.items() if not e.get("cached_blocks")] or list(runs)
        reference = max(live, key=lambda n: runs[n][1].get("stage1_steps", 0))
    if reference not in runs:
        raise ValueError(f"--reference={reference!r} is not a finished scaleot run of {cell}: {sorted(runs)}")
    ref_plug = tuple(runs[reference][0]["results"][PLUG_IN]["correct"])
    ref_cpu = _stage1_seconds(runs[reference][0])[1]
    rows = []
    for name in [reference, *(n for n in runs if n != reference)]:
        metrics, emulator = runs[name]
        wall, cpu = _stage1_seconds(metrics)
        plug = tuple(metrics["results"][PLUG_IN]["correct"])
        rows.append({
            "run": name,
            "steps": emulator.get("stage1_steps"),
            "cached_blocks": emulator.get("cached_blocks", 0),
            "init": emulator.get("harmonizer_init", "identity"),
            "policy_interval": emulator.get("policy_interval"),
            "stage1_seconds": wall,
            "stage1_cpu_seconds": cpu,
            "cpu_ratio": cpu / ref_cpu if cpu and ref_cpu else None,
            "emulator_ft": metrics["results"].get(EMULATOR_FT, {}).get("acc"),
            "plug_in": metrics["results"][PLUG_IN]["acc"],
            "vs_reference": None if name == reference else paired_difference(plug, ref_plug),
        })  # fmt: skip
    return rows


def _stage1_seconds(metrics: dict[str, Any]) -> tuple[float | None, float | None]:
    manifest = Path(metrics.get("bundle", {}).get("path", "")) / "manifest.json"
    if not manifest.is_file():
        return None, None
    wall, cpu = read_json(manifest).get("stage1_seconds", (None, None))
    return wall or None, cpu or None


def markdown(rows: Sequence[dict[str, Any]], cell: Path) -> str:
    """stage1.md: the table, the reference first."""
    lines = [f"# Stage-1 cost against transfer: {cell.name}", "", _COLUMNS, "|---" * 11 + "|"]
    for r in rows:
        diff = r["vs_reference"]
        cells = [
            r["run"], r["steps"], r["cached_blocks"] or "live", r["init"], r["policy_interval"],
            _num(r["stage1_seconds"], ".0f"), _num(r["stage1_cpu_seconds"], ".0f"),
            _num(r["cpu_ratio"], ".3f"),
            _num(r["emulator_ft"] and 100 * r["emulator_ft"], ".1f"), f"{100 * r['plug_in']:.1f}",
            "reference" if diff is None else f"{100 * diff[0]:+.1f} ± {100 * diff[1]:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += [
        "",
        "Accuracy in %; the paired difference is on the same test examples. Stage-1 seconds are the build's "
        "own (the bundle manifest), CPU seconds summed over the process's threads.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """stage1.png: plug-in (± paired error against the reference) over stage-1 CPU seconds, log scale."""
    shown = [r for r in rows if r["stage1_cpu_seconds"]]
    if not shown:
        return None
    fig, ax = new_figure((6.5, 4.0))
    for i, r in enumerate(shown):
        error = 100 * r["vs_reference"][1] if r["vs_reference"] else 0.0
        ax.errorbar(r["stage1_cpu_seconds"], 100 * r["plug_in"], yerr=error, fmt="o", color=f"C{i}",
                    capsize=3, label=_label(r))  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("stage-1 CPU seconds (log)")
    ax.set_ylabel("plug-in accuracy (%)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _label(row: dict[str, Any]) -> str:
    """``1000 live steps`` / ``400 steps on 192 cached blocks, least-squares start``: the plot's legend."""
    if not row["cached_blocks"]:
        return f"{row['steps']} live steps"
    start = ", least-squares start" if row["init"] == "least-squares" else ""
    return f"{row['steps']} steps on {row['cached_blocks']} cached blocks{start}"


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "cell", type=Path, metavar="CELL", help=f"a compare cell directory, e.g. {_EXAMPLE_CELL}"
    )
    parser.add_argument(
        "--reference",
        help="the run directory name to pair against (default: the finished live ScaleOT run with the most "
        "stage-1 steps)",
    )
    args = parser.parse_args(argv)
    try:  # bad input is one line, as scaleot's
        rows = stage1_rows(args.cell, args.reference)
    except ValueError as error:
        error_line(error)
        return EXIT_USAGE
    text = markdown(rows, args.cell)
    write_text(args.cell / "stage1.md", text)
    write_text(args.cell / "stage1.json", json.dumps(rows, indent=1))
    plot(rows, args.cell / "stage1.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
