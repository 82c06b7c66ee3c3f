"""What a run leaves on disk: checkpoints after every round, metrics.json, the final adapter, report, plot.

Every file is written to a temporary name and renamed into place, and each round's checkpoint is a directory
of its own, renamed into place before ``checkpoint/latest`` points to it: a run killed at any moment leaves
the previous round's checkpoint and metrics intact.

Run directory:
    config.toml, config.json   the resolved run config
    metrics.json               per-round records, zero-shot rows, final rows (rewritten after every round)
    checkpoint/latest          name of the newest round directory, e.g. ``round-0003``
    checkpoint/round-NNNN/     adapter.safetensors, strategy.safetensors (server-optimiser state), state.json
    adapter.safetensors        the final global adapter
    plug-in/                   the plug-in model as a transformers checkpoint (``simulations.export``)
    peft-adapter/              LoRA adapters only: the adapter as a peft adapter directory
    report.md, accuracy.png    results table and accuracy per round
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from emulator.results import choice_spread, one_answer_note, privacy_gap
from simulations.server_eval import EMULATOR_FT, EMULATOR_ZS, FULL_ZS, PLUG_IN, final_rows
from strategies.records import RoundRecord

_CHECKPOINT = "checkpoint"


@dataclass
class RunState:
    """Everything a resumed run needs besides the config: what has been measured so far."""

    zero_shot: dict[str, dict[str, Any]]
    history: list[RoundRecord] = field(default_factory=list)
    bundle: dict[str, str] = field(default_factory=dict)  # path and sha256 of the emulator bundle
    # Row name -> {"correct": [1, 0, ...], "correct_norm": [...]} of its latest evaluation, in test order,
    # so two runs on the same test examples can be compared pairwise (emulator.evaluation.paired_difference).
    per_example: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def rows(self) -> dict[str, dict[str, Any]]:
        """Results table: Full-ZS, Emulator-ZS, Emulator-FT and Plug-in (those measured so far), each with
        its per-example correctness where known."""
        last = next((r.evaluation for r in reversed(self.history) if r.plugin_acc is not None), None)
        emulator = next((r.evaluation for r in reversed(self.history) if r.emulator_acc is not None), None)
        rows = final_rows(self.zero_shot, last, emulator)
        return {name: _with_spread(row | self.per_example.get(name, {})) for name, row in rows.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "zero_shot": self.zero_shot,
            "rounds": [r.to_dict() for r in self.history],
            "bundle": self.bundle,
            "per_example": self.per_example,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunState:
        rounds = [RoundRecord.from_dict(r) for r in data["rounds"]]
        return cls(
            zero_shot=dict(data["zero_shot"]),
            history=rounds,
            bundle=dict(data.get("bundle", {})),
            per_example=dict(data.get("per_example", {})),
        )


def _with_spread(row: dict[str, Any]) -> dict[str, Any]:
    # How the row's predictions spread over choice positions, where its per-example picks are known.
    return row | choice_spread(row.get("predicted", ()))


@dataclass
class Checkpoint:
    adapter: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray]
    state: RunState


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write a safetensors file atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: Path, adapter: Mapping[str, np.ndarray], strategy: Mapping[str, np.ndarray], state: RunState
) -> Path:
    """Save the state after round ``len(state.history)``; older round checkpoints are removed after."""
    root = run_dir / _CHECKPOINT
    root.mkdir(parents=True, exist_ok=True)
    name = f"round-{len(state.history):04d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_tensors(tmp / "adapter.safetensors", adapter)
    write_tensors(tmp / "strategy.safetensors", strategy)
    write_text(tmp / "state.json", json.dumps(state.to_dict(), indent=1))
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)
    write_text(root / "latest", name)
    for old in root.glob("round-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The newest checkpoint of ``run_dir``.

    Raises:
        ValueError: ``run_dir`` has no checkpoint.
    """
    latest = run_dir / _CHECKPOINT / "latest"
    if not latest.is_file():
        raise ValueError(f"{run_dir} has no checkpoint to resume from (missing {latest})")
    directory = run_dir / _CHECKPOINT / latest.read_text().strip()
    state = RunState.from_dict(json.loads((directory / "state.json").read_text()))
    return Checkpoint(
        adapter=load_file(str(directory / "adapter.safetensors")),
        strategy=load_file(str(directory / "strategy.safetensors")),
        state=state,
    )


def write_metrics(run_dir: Path, state: RunState, config: Mapping[str, Any], finished: bool) -> None:
    """metrics.json: config, per-round records, results rows (with standard errors and per-example
    correctness) and the privacy gap."""
    rows = state.rows()
    saved = {k: v for k, v in state.to_dict().items() if k != "per_example"}  # the rows carry it
    data = {
        "status": "finished" if finished else "running",
        "rounds_done": len(state.history),
        "results": rows,
        "privacy_gap": privacy_gap(rows.get(PLUG_IN), rows.get(EMULATOR_FT)),
        **saved,
        "config": dict(config),
    }
    write_text(run_dir / "metrics.json", json.dumps(data, indent=1))


def write_report(run_dir: Path, state: RunState, title: str) -> None:
    """report.md: results table (accuracy ± stderr, %), privacy gap, per-round table, and the plot."""
    rows = state.rows()
    lines = [
        f"# {title}",
        "",
        "| row | acc (%) | acc_norm (%) | n | most picked choice (% of examples) |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for name in (FULL_ZS, EMULATOR_ZS, EMULATOR_FT, PLUG_IN):
        if name in rows:
            r = rows[name]
            top = "–" if "top_choice" not in r else f"{r['top_choice']} ({100 * r['top_choice_share']:.0f})"
            flag = " ⚠ one answer" if r.get("one_answer") else ""
            lines.append(
                f"| {name} | {pct(r['acc'], r['acc_stderr'])} | {pct(r['acc_norm'], r['acc_norm_stderr'])} "
                f"| {r['n']} | {top}{flag} |"
            )
            notes += [note] if (note := one_answer_note(name, r)) else []
    if notes:
        lines += ["", *(f"⚠ {note}." for note in notes)]
    if (gap := privacy_gap(rows.get(PLUG_IN), rows.get(EMULATOR_FT))) is not None:
        lines += [
            "",
            f"Privacy gap Δ = plug-in − emulator fine-tuned = {100 * gap:+.1f} points "
            "(larger is more private).",
        ]
    lines += [
        "",
        "| round | train loss | plug-in (%) | emulator (%) | clients ok/sent | MB out | MB in | s (eval s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in state.history:
        loss = "–" if r.train_loss is None else f"{r.train_loss:.4f}"
        lines.append(
            f"| {r.round} | {loss} | {pct(r.plugin_acc, r.plugin_acc_stderr)} | "
            f"{pct(r.emulator_acc, r.emulator_acc_stderr)} | {r.aggregated}/{r.sampled} | "
            f"{r.bytes_sent / 1e6:.2f} | {r.bytes_received / 1e6:.2f} | "
            f"{r.seconds:.1f} ({r.eval_seconds:.1f}) |"
        )
    if state.bundle:
        lines += [
            "",
            f"Emulator bundle: `{state.bundle.get('path')}` (sha256 {state.bundle.get('sha256', '')[:16]}…).",
        ]
    lines += ["", "![accuracy per round](accuracy.png)", ""]
    write_text(run_dir / "report.md", "\n".join(lines))


def plot_accuracy(run_dir: Path, state: RunState) -> Path:
    """accuracy.png: plug-in and emulator fine-tuned accuracy per round, zero-shot levels as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for attr, label, color in (("plugin_acc", PLUG_IN, "C0"), ("emulator_acc", EMULATOR_FT, "C1")):
        points = [
            (r.round, getattr(r, attr), getattr(r, attr + "_stderr") or 0.0)
            for r in state.history
            if getattr(r, attr) is not None
        ]
        if points:
            x, y, e = zip(*points, strict=True)
            ax.errorbar(
                x,
                [100 * v for v in y],
                yerr=[100 * v for v in e],
                marker="o",
                capsize=3,
                label=label,
                color=color,
            )
    for name, color in ((FULL_ZS, "C0"), (EMULATOR_ZS, "C1")):
        if name in state.zero_shot:
            ax.axhline(100 * state.zero_shot[name]["acc"], linestyle="--", color=color, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    return save_figure(fig, run_dir / "accuracy.png")


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as a PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def pct(value: float | None, stderr: float | None) -> str:
    """``52.0 ± 2.8``: a fraction and its standard error in percent; ``–`` when there is no value."""
    if value is None:
        return "–"
    return f"{100 * value:.1f} ± {100 * (stderr or 0.0):.1f}"
