"""The summary of ``scaleot compare`` over several tasks and seeds (``[compare].runs``): each cell (a task and
a seed) compared in ``<out>/<task>-s<seed>`` by ``simulations.studies.compare.compare_tasks``, then
summary.md and summary.json:

- per task, laid out as the paper's table: emulator zero-shot, emulator fine-tuned, plug-in, Δ = plug-in −
  emulator FT, and plug-in − ``full`` and − ``uniform``
  (same α, else the first uniform), each paired on the same test examples;
- the mean over tasks of each of these;
- while some tasks are unfinished, also the mean over the tasks where the anchors (``full``, ``uniform`` and
  the ``--against`` method) have all finished, for every method finished on all of them: the comparison a
  long, resumable evidence run can report before its last cell.

Statistics (ours): within a cell, a paired difference is the mean of the per-example differences ± its
standard error (``emulator.results.paired_difference``). Seeds of one task are averaged with
``se = sqrt(Σ se_s²) / S`` and tasks with ``se = sqrt(Σ se_t²) / T``, treating seeds and tasks as independent
samples (the seeds' test splits are different draws of the same task, so this slightly understates the error).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.results import EMULATOR_FT, EMULATOR_ZS, PLUG_IN, paired_difference
from simulations.server.outputs import read_metrics
from simulations.studies.methods import Method, is_reference, is_upper_bound, pairs_with_reference

if TYPE_CHECKING:
    from simulations.run_config import RunConfig

log = logging.getLogger(__name__)

Estimate = tuple[float, float]  # (mean, standard error), fractions


def summarise(
    planned: Sequence[tuple[RunConfig, list[tuple[Method, RunConfig]], Path]],
    default_alpha: float,
    against: str = "",
) -> dict[str, Any]:
    """Per-task and mean-over-tasks estimates of every method from the cells' metrics.json files.

    Args:
        against: a method label: every other method's plug-in minus its, paired, as one more column.
    """
    per_cell: dict[str, list[dict[str, dict[str, Estimate]]]] = {}
    kinds: dict[str, str] = {}  # label -> method kind, in the order the methods first finished
    for config, methods, directory in planned:
        results = _cell_results(methods, config, directory)
        per_cell.setdefault(config.task, []).append(_cell_estimates(results, against))
        kinds |= {label: r["kind"] for label, r in results.items() if label not in kinds}
    labels = list(kinds)
    tasks = {task: _combine_seeds(cells_) for task, cells_ in per_cell.items()}
    mean = {
        label: _combine([tasks[t][label] for t in tasks if label in tasks[t]], complete=len(tasks))
        for label in labels
    }
    summary = {"tasks": tasks, "mean": {k: v for k, v in mean.items() if v}, "methods": labels}
    summary |= _anchored_mean(tasks, kinds, against)
    return summary | ({"against": against} if against else {})


def _anchored_mean(
    tasks: Mapping[str, Mapping[str, Mapping[str, Estimate]]],
    kinds: Mapping[str, str],
    against: str,
) -> dict[str, Any]:
    """``{"anchored": {"tasks": [...], "anchors": [...], "mean": {label: estimates}}}`` over the tasks where
    every anchor has finished, when that is at least two tasks but not all (else ``{}``: the mean over all
    tasks says it). A method unfinished on one of those tasks is left out rather than averaged over fewer."""
    anchors = [
        label
        for label, kind in kinds.items()
        if is_upper_bound(kind) or is_reference(kind) or label == against
    ]
    done = [t for t, rows in tasks.items() if anchors and all(rows.get(a) for a in anchors)]
    if not 1 < len(done) < len(tasks):
        return {}
    mean = {
        label: _combine([tasks[t][label] for t in done if tasks[t].get(label)], complete=len(done))
        for label in kinds
    }
    return {"anchored": {"tasks": done, "anchors": anchors, "mean": {k: v for k, v in mean.items() if v}}}


def _cell_results(
    methods: Sequence[tuple[Method, RunConfig]], cell: RunConfig, directory: Path
) -> dict[str, dict[str, Any]]:
    """``{label: {"kind", "alpha", "plug_in", "emulator_zs", "emulator_ft"}}`` of the finished methods of one
    cell (a row the run did not score: ``None``)."""
    results = {}
    for method, config in methods:
        metrics = read_metrics(directory / method.slug(cell.emulator))
        if metrics.get("status") != "finished":
            continue
        rows = metrics["results"]
        results[Method.label(method, cell.emulator)] = {
            "kind": method.kind,
            "alpha": config.emulator.alpha,
            PLUG_IN: tuple(rows[PLUG_IN]["correct"]),
            **{
                row: tuple(rows[row]["correct"]) if row in rows else None
                for row in (EMULATOR_ZS, EMULATOR_FT)
            },
        }
    return results


def _cell_estimates(
    results: Mapping[str, Mapping[str, Any]], against: str = ""
) -> dict[str, dict[str, Estimate]]:
    full = next((r for r in results.values() if is_upper_bound(r["kind"])), None)
    uniform = [r for r in results.values() if is_reference(r["kind"])]
    estimates = {}
    for label, r in results.items():
        plug = r[PLUG_IN]
        row = {PLUG_IN: _mean(plug)}
        if r[EMULATOR_ZS] is not None and not is_upper_bound(r["kind"]):
            row[EMULATOR_ZS] = _mean(r[EMULATOR_ZS])
        if r[EMULATOR_FT] is not None and not is_upper_bound(r["kind"]):
            row[EMULATOR_FT] = _mean(r[EMULATOR_FT])
            row["gap"] = paired_difference(plug, r[EMULATOR_FT])
        if full is not None and r is not full:
            row["vs_full"] = paired_difference(plug, full[PLUG_IN])
        same = next((u for u in uniform if u["alpha"] == r["alpha"]), uniform[0] if uniform else None)
        if same is not None and pairs_with_reference(r["kind"]):
            row["vs_uniform"] = paired_difference(plug, same[PLUG_IN])
        if against in results and label != against:
            row["vs_against"] = paired_difference(plug, results[against][PLUG_IN])
        estimates[label] = row
    return estimates


def _mean(correct: Sequence[int]) -> Estimate:
    n = len(correct)
    p = sum(correct) / n
    return p, math.sqrt(p * (1 - p) / max(n - 1, 1))


def _combine_seeds(cells_: Sequence[Mapping[str, Mapping[str, Estimate]]]) -> dict[str, dict[str, Estimate]]:
    labels = [label for cell in cells_ for label in cell]
    return {
        label: _combine([cell[label] for cell in cells_ if label in cell], complete=len(cells_))
        for label in dict.fromkeys(labels)
    }


def _combine(rows: Sequence[Mapping[str, Estimate]], complete: int) -> dict[str, Estimate]:
    """Average independent estimates: mean of means, ``sqrt(Σ se²) / n``; only keys every row has, and
    nothing unless all ``complete`` rows are there (a partial mean would compare different tasks)."""
    if len(rows) < complete or not rows:
        return {}
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    return {
        k: (
            sum(r[k][0] for r in rows) / len(rows),
            math.sqrt(sum(r[k][1] ** 2 for r in rows)) / len(rows),
        )
        for k in keys
    }


_COLUMNS = (EMULATOR_ZS, EMULATOR_FT, PLUG_IN, "gap", "vs_full", "vs_uniform")
_HEADER = (
    "| method | emulator ZS | emulator FT | plug-in | Δ (paired) | plug-in − full (paired) "
    "| plug-in − uniform (paired) |"
)


def markdown(summary: Mapping[str, Any], picture: bool = True) -> str:
    """summary.md: one table per task, then (several tasks) the mean over tasks (accuracy points ± standard
    error); ``picture``: link summary.png (``plot_summary`` writes none while nothing has finished)."""
    lines = ["# Comparison over tasks and seeds", ""]
    columns, header = _COLUMNS, _HEADER
    if summary.get("against"):
        columns, header = (*columns, "vs_against"), f"{header} plug-in − {summary['against']} (paired) |"
    unfinished = "No method has finished every seed of this task yet."
    sections = [(task, rows, unfinished) for task, rows in summary["tasks"].items()]
    if len(summary["tasks"]) > 1:  # the mean over one task is that task's table again
        unfinished = "No method has finished every seed of every task yet."
        sections.append((f"mean over {len(summary['tasks'])} tasks", summary["mean"], unfinished))
    if anchored := summary.get("anchored"):
        sections.append((_anchored_title(anchored), anchored["mean"], ""))
    for title, rows, unfinished in sections:
        if not any(rows.values()):
            lines += [f"## {title}", "", unfinished, ""]
            continue
        lines += [f"## {title}", "", header, "|---" * (len(columns) + 1) + "|"]
        for label in summary["methods"]:
            if label in rows:
                cells_ = [
                    _cell(rows[label].get(k), signed=k not in (EMULATOR_ZS, EMULATOR_FT, PLUG_IN))
                    for k in columns
                ]
                # {}: a seed of this task has not finished; <task>-s<seed>/comparison.md has the others.
                name = label if rows[label] else f"{label} (a seed unfinished: see each seed's comparison.md)"
                lines.append(f"| {name} | " + " | ".join(cells_) + " |")
        lines.append("")
    lines.append(
        "Accuracy in % ± standard error; differences paired on the same test examples within each run, "
        "seeds and tasks averaged as independent estimates (simulations/studies/compare_summary.py)."
    )
    if picture:
        lines += ["", "![plug-in per task and method](summary.png)"]
    return "\n".join(lines) + "\n"


def _anchored_title(anchored: Mapping[str, Any]) -> str:
    return (
        f"mean over the {len(anchored['tasks'])} tasks {', '.join(anchored['anchors'])} have finished "
        f"({', '.join(t.removeprefix('bigbench:') for t in anchored['tasks'])}): the methods finished on all "
        "of them"
    )


_FT_MARKER = {"color": "white", "markeredgecolor": "black", "markersize": 5, "linestyle": "none"}


def plot_summary(summary: Mapping[str, Any], path: Path) -> Path | None:
    """summary.png: per task and for the mean over tasks, one bar per method (plug-in % ± standard error),
    with the method's emulator fine-tuned accuracy as a white diamond on its bar (Δ is the distance)."""
    from simulations.server.outputs import new_figure, save_figure

    groups = [(t.removeprefix("bigbench:"), rows) for t, rows in summary["tasks"].items()]
    if summary["mean"] and len(summary["tasks"]) > 1:
        groups.append((f"mean over {len(summary['tasks'])} tasks", summary["mean"]))
    if anchored := summary.get("anchored"):
        groups.append((f"mean over {len(anchored['tasks'])} finished tasks", anchored["mean"]))
    # A method that has not finished every seed of a task has no estimate there yet ({}).
    groups = [(name, kept) for name, rows in groups if (kept := {k: r for k, r in rows.items() if r})]
    methods = summary["methods"]
    if not groups:
        return None  # nothing finished yet: no picture
    width = 0.8 / max(len(methods), 1)
    # Wide enough for every bar, capped: seven tasks of seven methods made a 29-inch strip.
    width_in = min(14.0, max(6.5, 1.6 * len(groups) * max(len(methods), 1) / 3))
    fig, ax = new_figure((width_in + 3.0, 4.5))  # + legend
    for i, label in enumerate(methods):
        xs = [g + (i - (len(methods) - 1) / 2) * width for g, (_, rows) in enumerate(groups) if label in rows]
        rows = [rows[label] for _, rows in groups if label in rows]
        ax.bar(
            xs,
            [100 * r[PLUG_IN][0] for r in rows],
            width,
            label=label,
            color=f"C{i}",
            alpha=0.85,
            yerr=[100 * r[PLUG_IN][1] for r in rows],
            capsize=2,
        )
        ft = [(x, 100 * r[EMULATOR_FT][0]) for x, r in zip(xs, rows, strict=True) if EMULATOR_FT in r]
        if ft:
            ax.plot(*zip(*ft, strict=True), "D", **_FT_MARKER)
    ax.plot([], [], "D", label="emulator fine-tuned", **_FT_MARKER)
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=8)
    ax.set_ylabel("plug-in accuracy (%) ± standard error")
    low = min(
        100 * r[k][0] for _, rows in groups for r in rows.values() for k in (PLUG_IN, EMULATOR_FT) if k in r
    )
    ax.set_ylim(max(0.0, low - 10), None)
    # Beside the axes: inside, a legend of eight or more methods covered the bars.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return save_figure(fig, path)


def _cell(value: Sequence[float] | None, signed: bool) -> str:
    if value is None:
        return "–"
    return f"{100 * value[0]:{'+' if signed else ''}.1f} ± {100 * value[1]:.1f}"
